"""An index export's manifest (llmops.rag.index_transfer): read from its folder or from the file
itself, every bad field named."""

import pytest


def test_a_bad_index_export_manifest_names_the_field(tmp_path):
    import json

    from llmops.rag.index_transfer import EXPORT_FORMAT, IndexTransferError, read_export_manifest

    folder = tmp_path / "idx-0123"
    folder.mkdir()
    good = {"format": EXPORT_FORMAT, "index_version": "idx-0123", "metadata": {"index_version": "idx-0123"},
            "rows": 3, "records": "records.parquet", "records_sha256": "0" * 64}  # fmt: skip
    (folder / "index.json").write_text(json.dumps(good))
    manifest = read_export_manifest(str(folder / "index.json"))  # the file itself names the export too
    assert (manifest.index_version, manifest.rows, manifest.url) == ("idx-0123", 3, str(folder))
    for change, message in [
        ({"format": "other/1"}, "format: expected 'llmops-index-export/1'"),
        ({"rows": "3", "records_sha256": None}, "rows: Input should be a valid integer.*records_sha256"),
        ({"index_version": "building-1"}, "index_version: 'building-1' is not an index version"),
        ({"metadata": {"index_version": "idx-other"}}, "metadata: must name index_version 'idx-0123'"),
    ]:
        (folder / "index.json").write_text(json.dumps(good | change))
        with pytest.raises(IndexTransferError, match=message):
            read_export_manifest(str(folder))
