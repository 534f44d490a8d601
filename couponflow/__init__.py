"""couponflow: the shared core of the coupon recommender.

The core owns every fact two rooms must agree on (the data contract, the feature list,
the model's inputs, the policy's maths). It never imports Airflow, Feast, GX or BentoML.
"""

__version__ = "0.1.0"
