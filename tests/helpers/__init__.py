"""Plain helpers several test modules share: data, workspaces and small functions, no
fixtures (those are tests/conftest.py's). A test module imports these, never another test
module, so running one file never collects or imports another's tests."""
