"""Split documents into chunks with LangChain's text splitters.

Markdown is split on headings, then paragraphs, then sentences; other text on paragraphs,
lines and words. Every chunk keeps its source path, its position in the document, its start
offset, the document's content hash and its own content hash (the key for reusing embeddings).
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmops.rag.documents import SourceDocument, text_hash


class ChunkingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(800, ge=50, le=20_000)  # characters
    chunk_overlap: int = Field(120, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self

    def key(self) -> str:
        return json.dumps({"splitter": "recursive-v1", **self.model_dump()}, sort_keys=True)


class Chunk(BaseModel):
    id: str
    text: str
    source: str
    position: int  # 0-based index of the chunk in its document
    start: int  # character offset in the document's text
    doc_hash: str
    content_hash: str
    kind: str

    def metadata(self) -> dict[str, str | int]:
        """What the vector store keeps beside the text (scalars only, as Chroma wants)."""
        return {
            "source": self.source,
            "position": self.position,
            "start": self.start,
            "doc_hash": self.doc_hash,
            "content_hash": self.content_hash,
            "kind": self.kind,
        }


def _splitter(kind: str, config: ChunkingConfig):
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    common = {"chunk_size": config.chunk_size, "chunk_overlap": config.chunk_overlap, "add_start_index": True}
    if kind == "markdown":
        return RecursiveCharacterTextSplitter.from_language(Language.MARKDOWN, **common)
    return RecursiveCharacterTextSplitter(separators=["\n\n", "\n", ". ", " ", ""], **common)


def split_documents(documents: list[SourceDocument], config: ChunkingConfig) -> list[Chunk]:
    splitters = {}
    chunks = []
    for document in documents:
        splitter = splitters.setdefault(document.kind, _splitter(document.kind, config))
        pieces = splitter.create_documents([document.text])
        for position, piece in enumerate(pieces):
            key = f"{document.path}\0{document.content_hash}\0{position}"
            chunks.append(
                Chunk(
                    id=hashlib.sha256(key.encode()).hexdigest()[:32],
                    text=piece.page_content,
                    source=document.path,
                    position=position,
                    start=int(piece.metadata.get("start_index", -1)),
                    doc_hash=document.content_hash,
                    content_hash=text_hash(piece.page_content),
                    kind=document.kind,
                )
            )
    return chunks
