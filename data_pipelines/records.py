"""Raw input records: reading JSONL lines with their position, and parsing them into documents.

Every line read becomes exactly one of: a document, or a malformed record with a reason. Nothing
here raises on bad data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

MALFORMED_STEP = "parse"
PREVIEW_CHARS = 300


@dataclasses.dataclass(frozen=True)
class RawLine:
    path: str
    line_no: int  # 1-based
    data: bytes

    @property
    def uid(self) -> str:
        return f"{self.path}:{self.line_no}"


def read_lines(readable_file) -> Iterator[RawLine]:
    """Lines of a Beam `ReadableFile` (compression detected from the extension)."""
    path = readable_file.metadata.path
    with readable_file.open() as f:
        line_no = 0
        while True:
            line = f.readline()
            if not line:
                return
            line_no += 1
            yield RawLine(path, line_no, line.rstrip(b"\r\n"))


def read_raw(p, pattern: str):
    """Every line of the (possibly compressed) files matching `pattern` as a `RawLine`, spread
    over workers, and their count (a singleton PCollection: the accounting's ground truth).
    No match is an error, not an empty run."""
    import apache_beam as beam
    from apache_beam.io import fileio
    from apache_beam.io.filesystem import CompressionTypes

    raw = (p | "Match" >> fileio.MatchFiles(
               pattern, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
           | "Open" >> fileio.ReadMatches(compression=CompressionTypes.AUTO)
           | "Lines" >> beam.FlatMap(read_lines)
           | "Spread" >> beam.Reshuffle())
    return raw, raw | "CountInputs" >> beam.combiners.Count.Globally()


def malformed(raw: RawLine, reason: str, detail: str = "") -> dict:
    return {"uid": raw.uid, "id": raw.uid, "step": MALFORMED_STEP, "reason": reason,
            "detail": detail, "lang": "und", "tokens": 0,
            "raw": raw.data[:PREVIEW_CHARS].decode("utf-8", errors="replace")}


def parse_json_object(raw: RawLine, required: tuple[str, ...]) -> tuple[dict | None, dict | None]:
    """-> (object, None) or (None, malformed record). `required` fields must be strings."""
    if not raw.data.strip():
        return None, malformed(raw, "empty_line")
    try:
        line = raw.data.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, malformed(raw, "bad_encoding", str(e))
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, malformed(raw, "bad_json", str(e))
    if not isinstance(obj, dict):
        return None, malformed(raw, "not_an_object", type(obj).__name__)
    for field in required:
        if field not in obj:
            return None, malformed(raw, f"missing_{field}")
        if not isinstance(obj[field], str):
            return None, malformed(raw, f"bad_{field}_type", type(obj[field]).__name__)
    return obj, None


def parse_web_document(raw: RawLine, text_field: str = "text",
                       declared_lang_field: str | None = None) -> tuple[dict | None, dict | None]:
    """A JSONL web record -> (doc, None) or (None, malformed). Keeps `id` and `url` if present,
    and the string in `declared_lang_field` (if given and present) as `declared_lang`."""
    obj, bad = parse_json_object(raw, (text_field,))
    if bad:
        return None, bad
    src_id = obj.get("id")
    doc = {"uid": raw.uid, "id": str(src_id) if src_id not in (None, "") else raw.uid,
           "text": obj[text_field]}
    if isinstance(obj.get("url"), str):
        doc["url"] = obj["url"]
    if declared_lang_field and isinstance(obj.get(declared_lang_field), str):
        doc["declared_lang"] = obj[declared_lang_field].strip().lower()
    return doc, None
