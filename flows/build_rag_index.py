"""Build a versioned Chroma index over a folder of documents.

    python flows/build_rag_index.py run                         # the project's own docs/
    python flows/build_rag_index.py run --docs ~/handbook --chunk-size 1000 --chunk-overlap 150
    python flows/build_rag_index.py run --shards 4 --with batch   # embedding shards on AWS Batch

start (load + split + version) → embed (foreach shard, batched) → write (Chroma collection named
by the index version) → end. The index version hashes (corpus version, chunking, embedding model):
an unchanged corpus is not rebuilt, and chunks whose text is already in the newest index of the
same chunking and model reuse its embeddings instead of being embedded again. The BM25 side of
hybrid retrieval is derived from the stored chunk texts when the index is opened (llmops.rag.lexical).
Card: python flows/build_rag_index.py card view write
"""

from metaflow import FlowSpec, Parameter, card, current, package_sources, resources, step, user_errors

from llmops.packaging import CODE_PACKAGE_SUFFIXES, code_package_sources


@user_errors
@package_sources(code_package_sources(__file__), suffixes=CODE_PACKAGE_SUFFIXES)
class BuildRagIndexFlow(FlowSpec):
    docs = Parameter("docs", default="docs", help="Folder of Markdown, text, HTML and PDF files.")
    chunk_size = Parameter("chunk-size", default=800, type=int, help="Chunk size in characters.")
    chunk_overlap = Parameter("chunk-overlap", default=120, type=int, help="Overlap between chunks.")
    embedding_model = Parameter(
        "embedding-model",
        default="all-MiniLM-L6-v2",
        help="'all-MiniLM-L6-v2' (packaged, offline) or a local sentence-transformers folder.",
    )
    shards = Parameter(
        "shards",
        default=2,
        type=int,
        help="Parallel embedding tasks (foreach width), each given at least 256 chunks to embed.",
    )
    batch_size = Parameter("batch-size", default=16, type=int, help="Texts per embedding batch.")
    chroma = Parameter(
        "chroma",
        default="",
        help="Chroma folder or http://host:port server (default: $LLMOPS_CHROMA_URL, "
        "$LLMOPS_CHROMA_PATH or $LLMOPS_HOME/chroma).",
    )

    @step
    def start(self):
        from pydantic import ValidationError

        from llmops.errors import ParameterError, field_problems
        from llmops.rag.chunking import ChunkingConfig, split_documents
        from llmops.rag.documents import CorpusError, load_corpus
        from llmops.rag.embeddings import Embedder
        from llmops.rag.index import (
            MIN_CHUNKS_PER_SHARD,
            chroma_client,
            chroma_location,
            index_version,
            list_indexes,
            shard_positions,
        )

        if self.shards < 1:
            raise ParameterError(f"--shards: must be at least 1, got {self.shards}")
        try:
            chunking = ChunkingConfig(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap)
        except ValidationError as exc:
            raise ParameterError(f"--chunk-size/--chunk-overlap: {field_problems(exc)}") from None
        embedder = Embedder(self.embedding_model, batch_size=self.batch_size)
        corpus = load_corpus(self.docs)
        if not corpus.documents:
            raise CorpusError(f"--docs: no readable documents in {self.docs} (skipped: {corpus.skipped})")
        self.corpus_version = corpus.version
        self.chunking = chunking.model_dump()
        self.embedding_model_id = embedder.model_id
        self.chunks = [c.model_dump() for c in split_documents(corpus.documents, chunking)]
        self.index_version = index_version(corpus.version, chunking, embedder.model_id)
        self.chroma_location = chroma_location(self.chroma or None)
        self.corpus_stats = {
            "files": len(corpus.documents),
            "chunks": len(self.chunks),
            "characters": sum(d.n_chars for d in corpus.documents),
            "tokens": sum(embedder.count_tokens([c["text"] for c in self.chunks])),
            "by_kind": {
                k: sum(d.kind == k for d in corpus.documents) for k in ("markdown", "text", "html", "pdf")
            },
            "skipped": [s.model_dump() for s in corpus.skipped],
        }
        for skipped in corpus.skipped:
            print(f"skipped {skipped.path}: {skipped.reason}")
        client = chroma_client(self.chroma_location)
        self.already_built = any(m["index_version"] == self.index_version for m in list_indexes(client))
        self.to_embed, self.reused = self._plan(client, chunking, embedder.model_id)
        print(
            f"{corpus.version}: {len(corpus.documents)} files -> {len(self.chunks)} chunks; index "
            f"{self.index_version}: {len(self.to_embed)} to embed, {len(self.reused)} reused"
            + (" (already built)" if self.already_built else "")
        )
        self.shard_plan = shard_positions(self.to_embed, self.shards)  # chunk positions per shard
        if len(self.shard_plan) < self.shards:
            print(
                f"{len(self.shard_plan)} of --shards {self.shards} used: {len(self.to_embed)} chunks to "
                f"embed, at least {MIN_CHUNKS_PER_SHARD} a shard (each shard loads the model)"
            )
        self.next(self.embed, foreach="shard_plan")

    def _plan(self, client, chunking, model_id):
        """Chunk positions to embed (one per new text), and the content hashes whose embeddings
        an earlier index has."""
        from llmops.rag.index import indexed_hashes, plan_embedding, previous_index

        self.reused_from = None
        if self.already_built:
            return [], []
        previous = previous_index(client, chunking, model_id)
        self.reused_from = previous.name if previous is not None else None
        hashes = [c["content_hash"] for c in self.chunks]
        known = indexed_hashes(previous) & set(hashes)
        return plan_embedding(hashes, known), sorted(known)

    @resources(cpu=2, memory=4096)
    @step
    def embed(self):
        import numpy as np

        from llmops.rag.chunking import index_text
        from llmops.rag.embeddings import Embedder, EmbeddingSettings
        from llmops.settings import settings_from_env

        positions = self.input
        # the embedded text: the chunk without markup (llmops.rag.chunking.index_text)
        chunks = [self.chunks[i] for i in positions]
        texts = [index_text(c["text"], c["heading"], c["source"]) for c in chunks]
        self.shard_positions = positions
        # (len(positions), dim) float32; nothing to embed (an unchanged corpus) loads no model
        self.shard_embeddings = np.zeros((0, 0), dtype=np.float32)
        if texts:
            from llmops.progress import Progress

            progress = Progress(f"shard {self.index}: embedded", len(texts), "chunks", every_s=10)
            with progress.ticking():  # a line every 10 s while the model loads and a slice runs
                # bfloat16 products where the CPU has them (LLMOPS_EMBED_PRECISION, llmops.rag.embeddings)
                precision = settings_from_env(EmbeddingSettings).embed_precision
                embedder = Embedder(self.embedding_model, batch_size=self.batch_size, precision=precision)
                # one call: length buckets over the whole shard, a progress line as batches finish
                self.shard_embeddings = embedder.embed(texts, progress=progress.callback())
        else:
            print(f"shard {self.index}: nothing to embed")
        self.next(self.write)

    @card(type="llmops_corpus")
    @step
    def write(self, inputs):
        from llmops.rag.chunking import Chunk, ChunkingConfig
        from llmops.rag.index import (
            IndexInfo,
            assemble_vectors,
            chroma_client,
            reusable_embeddings,
            write_index,
        )

        self.merge_artifacts(inputs, exclude=["shard_positions", "shard_embeddings"])
        client = chroma_client(self.chroma_location)
        self.embedded_chunks = sum(len(i.shard_positions) for i in inputs)
        # chunks that got an embedding without embedding their text here: from the earlier index,
        # or from an identical chunk of this corpus
        self.reused_chunks = len(self.chunks) - self.embedded_chunks if not self.already_built else 0
        if self.already_built:
            print(f"{self.index_version} is already in {self.chroma_location}: nothing to write")
            self.next(self.end)
            return
        chunking = ChunkingConfig(**self.chunking)
        reused = {}
        if self.reused:
            reused = reusable_embeddings(client.get_collection(self.reused_from), set(self.reused))
        vectors = assemble_vectors(
            [c["content_hash"] for c in self.chunks],
            [(task.shard_positions, task.shard_embeddings) for task in inputs],
            reused,
        )
        info = IndexInfo(
            version=self.index_version,
            corpus_version=self.corpus_version,
            chunking=chunking,
            embedding_model=self.embedding_model,
            embedding_model_id=self.embedding_model_id,
            chunks=len(self.chunks),
        )
        write_index(
            client,
            info,
            [Chunk(**c) for c in self.chunks],
            vectors,
            progress=lambda done, total: print(f"written {done}/{total} chunks"),
        )
        self.index_info = info.model_dump(mode="json")
        self.next(self.end)

    @step
    def end(self):
        print(
            f"\nIndex {self.index_version} in {self.chroma_location}: {self.corpus_stats['chunks']} chunks "
            f"from {self.corpus_stats['files']} files ({self.embedded_chunks} embedded, "
            f"{self.reused_chunks} reused); {len(self.corpus_stats['skipped'])} files skipped"
        )
        print(f"Corpus card:  python flows/build_rag_index.py card view write --run-id {current.run_id}")
        print(f"Evaluate it:  python flows/evaluate_rag.py run --index {self.index_version}")


if __name__ == "__main__":
    BuildRagIndexFlow()
