"""Many runs over one run's data: random search, the paper's experiment tables, sub-runs."""
