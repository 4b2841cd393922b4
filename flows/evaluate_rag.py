"""Evaluate a RAG configuration on the golden set, choose its generator, gate it, and release it.

    python flows/evaluate_rag.py run                        # newest index, hybrid retrieval
    python flows/evaluate_rag.py run --index idx-… --prompt rag_answer --k 5 --retrieval dense
    python flows/evaluate_rag.py run --generators extractive,base,champion   # the default
    python flows/evaluate_rag.py run --generators extractive,openai:http://127.0.0.1:3001/v1#llm
    python flows/evaluate_rag.py run --judge-url http://127.0.0.1:3001/v1 --judge-model llm
    python flows/evaluate_rag.py run --rounds none          # every candidate answers every question
    python flows/evaluate_rag.py --config policy my_rag_policy.yaml run

start (check golden set, prompt, index, generators; retrieve every question's context once; the
extractive floor answers them all) → answer (foreach generator candidate: generate from those same
contexts, in batches; an LLM candidate answers in rounds (--rounds 6,12, then all) and stops once a
bound at --confidence says it cannot reach the floor's answer_key or a policy min; hit@k, MRR,
context coverage and precision, answer key facts, ragas metrics) → evaluate (choose the best
candidate under the policy, extractive as the floor; @gate on it) → promote (register the release:
index + retrieval settings + embedding model + prompt + generator, move `champion`) → end.
Cards: python flows/evaluate_rag.py card view evaluate [--id gate]
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
from llmops.rag.candidates import DEFAULT_CONFIDENCE, DEFAULT_ROUNDS
from llmops.rag.retriever import DEFAULT_BM25_WEIGHT, DEFAULT_DENSE_WEIGHT, DEFAULT_MODE


@user_errors
@package_sources(code_package_sources(__file__), suffixes=CODE_PACKAGE_SUFFIXES)
class EvaluateRagFlow(FlowSpec):
    policy = Config(
        "policy",
        default="evals/rag.yaml",
        parser=gate_policy_parser,
        help="Gate policy YAML: metric thresholds and regression vs the champion release.",
    )
    golden = Parameter("golden", default="evals/rag_golden.yaml", help="Golden set YAML.")
    index_ref = Parameter("index", default="", help="Index version (default: the newest in the store).")
    prompt = Parameter("prompt", default="rag_answer", help="Prompt name in prompts/, or a YAML path.")
    generators = Parameter(
        "generators",
        default="extractive,base,champion",
        help="Generator candidates, comma-separated: extractive (always), base (SmolLM2 when installed), "
        "champion (the --llm-release champion), transformers:/model/folder, openai:http://host:port/v1#model.",
    )
    rounds = Parameter(
        "rounds",
        default=",".join(map(str, DEFAULT_ROUNDS)),
        help="Questions an LLM candidate answers before each early-stop check, growing (the last "
        "round is the whole set); none: every candidate answers every question.",
    )
    confidence = Parameter(
        "confidence",
        default=DEFAULT_CONFIDENCE,
        type=float,
        help="Confidence of the bound that stops a candidate early (0.5 to below 1).",
    )
    llm_release = Parameter("llm-release", default="llm", help="Registry name of the fine-tuned LLM.")
    retrieval = Parameter("retrieval", default=DEFAULT_MODE, help="Retrieval mode: dense, bm25 or hybrid.")
    dense_weight = Parameter(
        "dense-weight", default=DEFAULT_DENSE_WEIGHT, type=float, help="Weight of dense ranks (hybrid)."
    )
    bm25_weight = Parameter(
        "bm25-weight", default=DEFAULT_BM25_WEIGHT, type=float, help="Weight of BM25 ranks (hybrid)."
    )
    k = Parameter("k", default=4, type=int, help="Chunks retrieved per question (1-50).")
    judge_url = Parameter("judge-url", default="", help="OpenAI-compatible URL of an LLM judge (optional).")
    judge_model = Parameter("judge-model", default="", help="The judge's model name.")
    release_name = Parameter("release-name", default="", help="Registry name (default: the policy's).")
    chroma = Parameter(
        "chroma", default="", help="Chroma folder or http://host:port (default as the index flow)."
    )

    @step
    def start(self):
        from pydantic import ValidationError

        from llmops.errors import ParameterError
        from llmops.progress import Progress
        from llmops.prompts import load_prompt
        from llmops.rag.candidates import check_confidence, parse_rounds, resolve_candidates
        from llmops.rag.evaluation import answer_key_score, load_golden
        from llmops.rag.index import IndexNotFound, chroma_client, chroma_location, list_indexes, open_index
        from llmops.rag.release import open_pipeline
        from llmops.rag.retriever import MAX_K, RetrievalError, RetrievalSettings
        from llmops.registry import check_name

        self.registry_name = check_name(self.release_name or self.policy.model, "--release-name")
        if not 1 <= self.k <= MAX_K:
            raise ParameterError(f"--k: must be between 1 and {MAX_K}, got {self.k}")
        if self.judge_url and not self.judge_model:
            raise ParameterError("--judge-model: required with --judge-url")
        parse_rounds(self.rounds)
        check_confidence(self.confidence)
        try:
            settings = RetrievalSettings(
                mode=self.retrieval, dense_weight=self.dense_weight, bm25_weight=self.bm25_weight
            )
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise RetrievalError(f"--retrieval/--dense-weight/--bm25-weight: {msg}") from None
        self.retrieval_settings = settings.model_dump()
        golden = load_golden(self.golden)
        self.golden_version = golden.content_version
        print(f"Golden set {self.golden}: {len(golden.questions)} questions ({self.golden_version})")
        prompt = load_prompt(self.prompt)
        self.prompt_ref = f"{prompt.name}@{prompt.version}"
        self.chroma_location = chroma_location(self.chroma or None)
        client = chroma_client(self.chroma_location)
        indexes = list_indexes(client)
        if not self.index_ref and not indexes:
            raise IndexNotFound(
                f"--index: the store {self.chroma_location} has no index yet: "
                "run python flows/build_rag_index.py run"
            )
        self.index_version = self.index_ref or indexes[0]["index_version"]
        self.index_metadata = dict(open_index(client, self.index_version).metadata)
        # after the cheap checks: "base" may first build SmolLM2 from its package (tens of seconds)
        self.candidates, self.candidate_notes = resolve_candidates(self.generators, self.llm_release)
        # every candidate answers from exactly these contexts
        pipeline = open_pipeline(
            self.chroma_location, self.index_version, prompt, "extractive", retrieval=settings
        )
        self.embedding_model_path = str(pipeline.retriever.embedder.path)
        questions = [item.question for item in golden.questions]
        retrieved = pipeline.retriever.retrieve_many(questions, self.k)
        self.contexts = [[h.model_dump() for h in hits] for hits in retrieved]
        for note in self.candidate_notes:
            print(note)
        print(
            f"Evaluating {self.index_version} ({settings.mode} retrieval) with {self.prompt_ref} on "
            f"{len(questions)} questions ({self.golden_version}); generators: "
            + ", ".join(c["name"] for c in self.candidates)
        )
        # the floor first (seconds): an LLM candidate stops early once it cannot beat it
        progress = Progress("extractive: answered", len(questions), "questions")
        with progress.ticking():
            answers = pipeline.answer_many(questions, retrieved, progress=progress.callback())
        self.floor_answers = [a.model_dump() for a in answers]
        keys = [answer_key_score(a.answer, item) for a, item in zip(answers, golden.questions, strict=True)]
        self.floor_answer_key = sum(keys) / len(keys)
        self.next(self.answer, foreach="candidates")

    @step
    def answer(self):
        from llmops.gates import policy_from_config
        from llmops.prompts import PromptStore
        from llmops.rag.candidates import evaluate_candidate, parse_rounds
        from llmops.rag.evaluation import Judge, load_golden
        from llmops.rag.pipeline import RagAnswer
        from llmops.rag.release import open_pipeline
        from llmops.rag.retriever import Hit

        golden = load_golden(self.golden)
        prompt = PromptStore().get(*self.prompt_ref.split("@"))  # the version start checked
        pipeline = open_pipeline(self.chroma_location, self.index_version, prompt, self.input["spec"])
        judge = (
            Judge(url=self.judge_url, model=self.judge_model, embedding_model_path=self.embedding_model_path)
            if self.judge_url
            else None
        )
        name = self.input["name"]
        # the extractive floor's answers came from start: its task scores them
        floor = [RagAnswer(**a) for a in self.floor_answers] if name == "extractive" else None
        self.candidate = {
            **self.input,
            "position": self.index,
            **evaluate_candidate(
                name,
                pipeline,
                golden,
                [[Hit(**h) for h in question] for question in self.contexts],
                self.k,
                floor_answer_key=self.floor_answer_key,
                policy=policy_from_config(self.policy),
                judge=judge,
                floor_answers=floor,
                rounds=parse_rounds(self.rounds),
                confidence=self.confidence,
            ),
        }
        print(self.candidate["stopped"] or f"{name}: {self.candidate['scores']}")
        self.next(self.evaluate)

    @card(type="llmops_rag_eval", id="eval")
    @card(type="llmops_gate", id="gate")
    @gate(policy=config_expr("policy"))
    @step
    def evaluate(self, inputs):
        from llmops.gates import policy_from_config
        from llmops.rag.candidates import choose_generator
        from llmops.rag.release import score_champion

        self.merge_artifacts(inputs, exclude=["candidate", "floor_answers"])
        candidates = sorted((i.candidate for i in inputs), key=lambda c: c["position"])
        chosen, self.generator_choice = choose_generator(candidates, policy_from_config(self.policy))
        winner = candidates[chosen]
        self.generator_candidates = [
            {"name": c["name"], "settings": c["settings"], "scores": c["scores"], "chosen": i == chosen,
             "answered": c["answered"], "stopped": c["stopped"], "stop": c["stop"]}
            for i, c in enumerate(candidates)
        ]  # fmt: skip
        self.generator_settings = winner["settings"]
        self.eval_scores, self.eval_rows = winner["scores"], winner["rows"]
        self.eval_notes = winner["notes"] + self.candidate_notes
        self.champion_scored = score_champion(self.registry_name, self.golden_version)
        for c in candidates:
            if c["stopped"]:
                print(c["stopped"])
        print(self.generator_choice)
        print(f"Scores: {self.eval_scores}")
        self.next(self.promote)

    @step
    def promote(self):
        from llmops.promotion import gate_refusal
        from llmops.prompts import PromptStore
        from llmops.rag.index import IndexInfo
        from llmops.rag.release import RagRelease, register_rag_release

        self.release_version, self.promoted = None, False
        self.promotion_note = gate_refusal(self.gate_decision)
        if self.promotion_note is None:
            release = RagRelease(
                index=IndexInfo.from_metadata(self.index_metadata),
                chroma=self.chroma_location,
                embedding_model_path=self.embedding_model_path,
                prompt_name=self.prompt_ref.split("@")[0],
                prompt_version=self.prompt_ref.split("@")[1],
                generator=self.generator_settings,
                k=self.k,
                retrieval=self.retrieval_settings,
            )
            self.release_version, self.promoted, self.promotion_note = register_rag_release(
                name=self.registry_name,
                release=release,
                prompt=PromptStore().get(*self.prompt_ref.split("@")),  # the version evaluated
                scores=self.eval_scores,
                evaluation={"rows": self.eval_rows, "notes": self.eval_notes, "golden": self.golden},
                gate_decision=self.gate_decision,
                golden_version=self.golden_version,
                run_pathspec=f"{current.flow_name}/{current.run_id}",
            )
        print(self.promotion_note)
        self.next(self.end)

    @step
    def end(self):
        print(f"\n{self.registry_name}: {self.promotion_note}")
        print(f"Generator: {self.generator_choice}")
        print(f"Scores:   {self.eval_scores}")
        cards = "python flows/evaluate_rag.py card view evaluate --id eval|gate"
        print(f"Cards:    {cards} --run-id {current.run_id}")
        if self.promoted:
            print(f"Release:  llmops models show {self.registry_name}")
            print("Serve it: bentoml serve services.rag:Rag --host 127.0.0.1 --port 3000")


if __name__ == "__main__":
    EvaluateRagFlow()
