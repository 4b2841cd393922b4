"""The classic ML pipeline: tabular data in, a gated classifier served, drift watched.

data.py         load a table, its schema, content-addressed dataset versions
validation.py   schema, types, missing values, ranges, duplicates, class balance
profile.py      the reference profile a model is compared against later
drift.py        per-column drift tests against a profile (drift_stats.py: the statistics)
classifier.py   candidates, training, evaluation, safe (skops) model files
monitoring.py   live metrics from labelled traffic, the retraining set
simulate.py     shifted traffic for demos and tests
"""
