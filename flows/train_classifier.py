"""Train, evaluate, gate and promote a tabular classifier.

    python flows/train_classifier.py run
    python flows/train_classifier.py run --data my.csv --target label --group-column region
    python flows/train_classifier.py --config policy my_policy.yaml run

load → validate → version → split → train (foreach candidate) → select → evaluate + @gate
→ promote → end. The gate policy (thresholds, regression vs champion, fairness, drift)
is a Metaflow Config read from evals/classifier.yaml by default and stored with the run.
Cards: python flows/train_classifier.py card view validate|evaluate [--id gate]
"""

from metaflow import (
    Config,
    FlowSpec,
    Parameter,
    card,
    config_expr,
    current,
    gate,
    gate_policy_parser,
    package_sources,
    step,
    user_errors,
)

from llmops.packaging import CODE_PACKAGE_SUFFIXES, code_package_sources
from llmops.tabular import DEFAULT_DATASET


@user_errors
@package_sources(code_package_sources(__file__), suffixes=CODE_PACKAGE_SUFFIXES)
class TrainClassifierFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/classifier.yaml",
        parser=gate_policy_parser,
        help="Gate policy YAML: data rules, metric thresholds, regression, fairness, drift.",
    )
    data = Parameter(
        "data",
        default=DEFAULT_DATASET,
        help="CSV or Parquet file, or a bundled dataset 'sklearn:breast_cancer|iris|wine'.",
    )
    target = Parameter("target", default="target", help="Label column.")
    group_column = Parameter(
        "group-column",
        default="",
        help="Column to compute per-group (fairness) metrics on; optional.",
    )
    model_name = Parameter(
        "model-name",
        default="",
        help="Registry name (default: the policy's `model`, e.g. 'classifier').",
    )
    model_families = Parameter(
        "models",
        default="logistic_regression,random_forest,gradient_boosting",
        help="Comma-separated candidate families, each trained on a small grid.",
    )
    selection_metric = Parameter(
        "selection-metric",
        default="roc_auc",
        help="Validation metric that picks the best candidate.",
    )
    seed = Parameter("seed", default=0, type=int, help="Random seed for splits and models.")

    @step
    def start(self):
        from llmops.errors import ParameterError
        from llmops.gates import PolicyError
        from llmops.registry import check_name
        from llmops.tabular.classifier import METRICS, candidates
        from llmops.tabular.data import DataError, infer_schema, load_table, normalize

        self.registry_name = check_name(self.model_name or self.policy.model, "--model-name")
        self.families = [f.strip() for f in self.model_families.split(",") if f.strip()]
        candidates(self.families)  # an unknown family fails here, naming --models
        named = [f"metrics.{m}" for m in self.policy.metrics] + [
            f"regression.{m}" for m in self.policy.regression
        ]
        if self.policy.fairness:
            named.append(f"fairness.{self.policy.fairness.metric}")
        unknown = [n for n in named if n.split(".", 1)[1] not in METRICS]
        if unknown:
            raise PolicyError(f"policy: unknown metric(s) {unknown} (measured: {METRICS})")
        if self.selection_metric not in METRICS:
            raise ParameterError(f"--selection-metric: {self.selection_metric!r} is not one of {METRICS}")
        raw = load_table(self.data)
        schema = infer_schema(raw, self.target)
        if self.group_column and self.group_column not in raw.columns:
            raise DataError(f"--group-column: column {self.group_column!r} is not in the data")
        self.schema = schema.model_dump()
        self.dataset = normalize(raw, schema)
        print(f"Loaded {len(self.dataset)} rows, {len(schema.features)} features from {self.data}")
        self.next(self.validate)

    @card(type="llmops_data_profile")
    @step
    def validate(self):
        from llmops.tabular.data import TableSchema
        from llmops.tabular.rules import DataRules
        from llmops.tabular.validation import DataValidationFailed, validate_table

        report = validate_table(
            self.dataset,
            TableSchema(**self.schema),
            DataRules.model_validate(dict(self.policy.data)),
        )
        self.validation_report = report.model_dump()
        if not report.passed:
            raise DataValidationFailed(report)
        print(f"Validation passed: {len(report.checks)} checks")
        self.next(self.version)

    @card(type="llmops_data_profile")
    @step
    def version(self):
        from llmops.registry import Registry
        from llmops.tabular.data import TableSchema, dataset_version
        from llmops.tabular.drift import detect_drift
        from llmops.tabular.profile import Profile, build_profile
        from llmops.tabular.rules import DriftRule

        schema = TableSchema(**self.schema)
        self.dataset_version = dataset_version(self.dataset, schema)
        self.data_profile = build_profile(self.dataset, schema).model_dump()
        champion = Registry().find(self.registry_name)
        self.training_drift = None
        if champion is not None and self.policy.drift:
            reference = Profile.model_validate(champion.read_json("reference_profile.json"))
            report = detect_drift(reference, self.dataset, DriftRule.model_validate(dict(self.policy.drift)))
            self.training_drift = report.model_dump()
            print(f"Drift vs champion {champion.version}: {report.drifted_columns or 'none'}")
        print(f"Dataset version {self.dataset_version}")
        self.next(self.split)

    @step
    def split(self):
        from sklearn.model_selection import train_test_split

        from llmops.tabular.classifier import candidates

        labels = self.dataset[self.target]
        rest, self.test_set = train_test_split(
            self.dataset, test_size=0.2, stratify=labels, random_state=self.seed
        )
        self.train_set, self.validation_set = train_test_split(
            rest, test_size=0.25, stratify=rest[self.target], random_state=self.seed
        )
        self.candidate_grid = [c.model_dump() for c in candidates(self.families)]
        print(
            f"train/validation/test = {len(self.train_set)}/{len(self.validation_set)}/"
            f"{len(self.test_set)} rows; {len(self.candidate_grid)} candidates"
        )
        self.next(self.train, foreach="candidate_grid")

    @step
    def train(self):
        from llmops.tabular.classifier import Candidate, build_pipeline, classification_metrics, features
        from llmops.tabular.data import TableSchema

        schema = TableSchema(**self.schema)
        self.candidate = Candidate(**self.input)
        self.fitted_model = build_pipeline(schema, self.candidate, self.seed).fit(
            features(self.train_set, schema), self.train_set[self.target]
        )
        proba = self.fitted_model.predict_proba(features(self.validation_set, schema))
        self.validation_scores = classification_metrics(
            self.validation_set[self.target], proba, list(self.fitted_model.classes_)
        )
        print(f"{self.candidate.label}: {self.validation_scores}")
        self.next(self.select)

    @step
    def select(self, inputs):
        metric = self.selection_metric
        self.leaderboard = {i.candidate.label: i.validation_scores[metric] for i in inputs}
        best = max(inputs, key=lambda i: i.validation_scores[metric])
        self.best_candidate = best.candidate.label
        self.model = best.fitted_model
        self.merge_artifacts(
            inputs,
            include=[
                "schema",
                "dataset_version",
                "data_profile",
                "training_drift",
                "test_set",
                "registry_name",
            ],
        )
        score = self.leaderboard[self.best_candidate]
        print(f"Best on validation {metric}: {self.best_candidate} ({score:.4f})")
        self.next(self.evaluate)

    @card(type="llmops_eval", id="eval")
    @card(type="llmops_gate", id="gate")
    @gate(policy=config_expr("policy"))
    @step
    def evaluate(self):
        from sklearn.metrics import confusion_matrix

        from llmops.tabular.classifier import classification_metrics, features, group_metrics, score_champion
        from llmops.tabular.data import TableSchema

        schema = TableSchema(**self.schema)
        classes = list(self.model.classes_)
        proba = self.model.predict_proba(features(self.test_set, schema))
        truth = self.test_set[self.target]
        self.eval_scores = classification_metrics(truth, proba, classes)
        predicted = [classes[i] for i in proba.argmax(axis=1)]
        self.confusion = {
            "classes": classes,
            "matrix": confusion_matrix(truth, predicted, labels=classes).tolist(),
        }
        self.group_scores, self.group_sizes = None, None
        if self.group_column:
            self.group_scores, self.group_sizes = group_metrics(
                self.test_set, truth, proba, classes, self.group_column
            )
        self.champion_scored = score_champion(self.registry_name, self.schema, self.test_set, self.target)
        print(f"Test metrics: {self.eval_scores}")
        if self.champion_scored:
            print(
                f"Champion {self.champion_scored['version']} on the same test set: "
                f"{self.champion_scored['scores']}"
            )
        self.next(self.promote)

    @step
    def promote(self):
        from llmops.promotion import gate_refusal
        from llmops.tabular.release import register_classifier

        self.promoted, self.model_version = False, None
        self.promotion_note = gate_refusal(self.gate_decision)
        if self.promotion_note is None:
            self.model_version, self.promoted, self.promotion_note = register_classifier(
                name=self.registry_name,
                model=self.model,
                schema=self.schema,
                reference_profile=self.data_profile,
                metrics=self.eval_scores,
                gate_decision=self.gate_decision,
                dataset_version=self.dataset_version,
                run_pathspec=f"{current.flow_name}/{current.run_id}",
                candidate=self.best_candidate,
            )
        print(self.promotion_note)
        self.next(self.end)

    @step
    def end(self):
        name = self.registry_name
        print(f"\nDataset {self.dataset_version}; best {self.best_candidate}")
        print(f"Test metrics: {self.eval_scores}")
        print(f"Gate: {'PASSED' if self.gate_decision['passed'] else 'FAILED'}; {self.promotion_note}")
        print("Cards:  python flows/train_classifier.py card view evaluate --id gate")
        if self.promoted:
            print(f"Models: llmops models show {name}")
            serve = "bentoml serve services.classifier:Classifier --host 127.0.0.1"
            print(f"Serve:  LLMOPS_CLASSIFIER_RELEASE={name} {serve}")


if __name__ == "__main__":
    TrainClassifierFlow()
