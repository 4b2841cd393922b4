"""The classic ML pipeline: tabular data in, a gated classifier served, drift watched.

data.py         load a table, its schema, content-addressed dataset versions
rules.py        the data and drift sections of a gate policy (pydantic only: cheap to load)
validation.py   schema, types, missing values, ranges, duplicates, class balance
profile.py      the reference profile a model is compared against later
drift.py        per-column drift tests against a profile (drift_stats.py: the statistics)
classifier.py   candidates, training, evaluation, safe (skops) model files
release.py      register a gated classifier in the registry
monitoring.py   live metrics from labelled traffic, the retraining set
simulate.py     shifted traffic for demos and tests
"""

# here, not in data.py, so that a flow can name it without importing pandas into every task and card
DEFAULT_DATASET = "sklearn:breast_cancer"
