"""The service's runtime: everything that runs inside a bento worker, and nothing that
builds, starts or releases one (serving.deploy). See serving/__init__.py."""
