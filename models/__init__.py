"""The shipped reference model repository; installed as the package data ``edge.reference_models``."""
