"""llmops: the Metaflow-free core of metaflow-llmops.

Data versioning and validation, drift statistics, gate rules, the model registry
and the classic-ML building blocks. Services import this package, never Metaflow.
"""

__version__ = "0.1.0"
