"""Image classifiers that feed rule packs: NudeNet (NSFW body parts) and RapidOCR (text in images).

Both are ONNX models that ship inside their PyPI wheels (``nudenet`` 3.4.2: ``320n.onnx``;
``rapidocr-onnxruntime`` 1.4.4: PP-OCRv4 detector + recogniser and the angle classifier) and
run on CPU through onnxruntime; neither package has a download path, so nothing is fetched at
run time. They are loaded lazily, the first time an image needs them.

Pixels always come from the project's one loader (:func:`curate.media.images.open_image`: EXIF
orientation applied, every mode to 8-bit RGB, transparency on white, frame 0), never from the
classifiers' own readers.

**What is stored** (catalog table ``image_scores``; one *summary* row per classified sample and
classifier key, plus detail rows):

| classifier | label | score | detail |
|---|---|---|---|
| ``nudenet@…`` | ``nsfw`` (summary) | max detection score over :data:`NUDENET_EXPOSED` (0.0 when none) | JSON ``{"class": the class of that max or null, "detections": [{"class", "score", "box": [x, y, w, h]}]}``, boxes in oriented full-size pixels |
| ``nudenet@…`` | each detected class (e.g. ``FACE_FEMALE``) | max score of that class | JSON list of its boxes |
| ``rapidocr@…`` | ``text`` (summary) | mean recognition confidence of the kept lines, 0–1 (NULL when no text) | the recognised lines joined by ``\\n`` ('' when none) |

``status`` is 'ok', or why the classifier has no result for that image (the loader's status,
e.g. 'truncated', or 'classifier_error'); such a sample counts as *unknown* for rules.
``sha256`` is the sha256 of the bytes that were classified: a row counts only while it equals
``images.sha256`` of the sample (the image the hash stage saw), so a re-hashed or replaced
image, or a sample id reused by a later ingest, is classified again instead of inheriting a
stale score.

**Keys.** ``classifier`` is ``<name>@<12 hex>``: the digest covers the package version, the
settings that change the stored values (OCR ``max_side`` and ``min_confidence``; NudeNet's
input size and exposed-class set) and :data:`CLASSIFIER_VERSION`, so changing a setting in a
rule computes new scores under a new key and never mixes old and new ones.

**Resumable.** :func:`ensure_scores` classifies in batches, each inserted in one transaction;
a killed run keeps the finished batches and the next run classifies only what has no row.

**Which samples.** Only samples whose image decoded in the hash stage (``images.status =
'ok'``), and only the rule's candidates: with ``only_if_hit: [rule ids]`` the samples hit by
any of those rules of the same pack, otherwise every sample. Samples that are candidates but
have no usable score (no image, undecodable, not yet classified) follow the rule's
``unknown`` (``pass``: not a hit; ``flag``: a hit whose evidence says the score is unknown).

Speeds on this project's 2-vCPU machine (docs/ARCHITECTURE.md, section Classifiers): NudeNet
≈ 30 ms/image; RapidOCR ≈ 1.5 s/image with its default settings (small images upscaled to
736 px) vs ≈ 0.4 s/image at ``max_side: 640``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from curate.errors import ConfigError
from curate.media.images import DEFAULT_MAX_PIXELS, Decoded, open_image, read_ref
from curate.progress import bar
from curate.stages.flag.basic import basic_sql
from curate.stages.flag.patterns import lit
from curate.stages.flag.rules import ocr_patterns

CLASSIFIER_VERSION = 1  # bump when what is stored for the same settings changes

#: NudeNet 3.4 classes counted in the ``nsfw`` summary score: exposed genitalia, breasts
#: (female), buttocks, anus — the "nudity" set; exposed belly, armpits, feet and male
#: breasts (beach and sports photos) and every COVERED / FACE class are left out.
NUDENET_EXPOSED = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                   "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")
NUDENET_RESOLUTION = 320  # the 320n model's input side (px)
SUMMARY_LABEL = {"nudenet": "nsfw", "rapidocr": "text"}
_PACKAGE = {"nudenet": "nudenet", "rapidocr": "rapidocr-onnxruntime"}
BATCH = {"nudenet": 64, "rapidocr": 16}  # samples per committed batch


# ----------------------------------------------------------------------------------------------
# keys and rule → classifier settings


@dataclass(frozen=True)
class Spec:
    """One classifier configuration: ``name`` ('nudenet' | 'rapidocr') and its settings."""

    name: str
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """``<name>@<12 hex>``: the ``image_scores.classifier`` value for these settings."""
        ident = {"name": self.name, "package": _package_version(self.name), "settings": dict(self.settings),
                 "curate": CLASSIFIER_VERSION}
        return f"{self.name}@{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]}"


def _package_version(name: str) -> str:
    try:
        return version(_PACKAGE[name])
    except PackageNotFoundError:
        return "not-installed"


def is_classifier_rule(rule) -> bool:
    """True for rule kinds that need stored classifier scores (``classifier_score``, ``ocr_text``)."""
    return getattr(rule, "kind", None) in ("classifier_score", "ocr_text")


def spec_of(rule) -> Spec:
    """The classifier configuration a ``classifier_score`` / ``ocr_text`` rule reads scores of."""
    if rule.kind == "ocr_text":
        return Spec("rapidocr", (("max_side", rule.max_side), ("min_confidence", rule.min_confidence)))
    if rule.kind == "classifier_score" and rule.classifier == "nudenet":
        return Spec("nudenet", (("resolution", NUDENET_RESOLUTION), ("exposed", NUDENET_EXPOSED)))
    raise TypeError(f"rule {rule.id}: not a classifier rule")  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# SQL


def candidates_sql(rule) -> str:
    """SELECT sample_id of the samples the rule classifies and evaluates: the hits of the rules
    named in ``only_if_hit`` (same pack; never classifier rules), or every sample."""
    cands = getattr(rule, "_candidates", None) or []
    if not rule.only_if_hit:
        return "SELECT sample_id FROM samples"
    if len(cands) != len(rule.only_if_hit):  # a rule built outside a Pack
        raise ConfigError(f"rule {rule.id}: only_if_hit names rules of its pack; load it through a pack")
    return "SELECT DISTINCT sample_id FROM (" + " UNION ALL ".join(f"SELECT sample_id FROM ({basic_sql(c)})"
                                                                    for c in cands) + ")"


def scores_sql(key: str, label: str) -> str:
    """SELECT sample_id, score, detail of the usable rows (status ok, same bytes as ``images``)."""
    return (
        "SELECT x.sample_id, x.score, x.detail FROM image_scores x JOIN images i ON i.sample_id = x.sample_id "
        f"AND i.sha256 = x.sha256 AND i.status = 'ok' WHERE x.classifier = {lit(key)} AND x.label = {lit(label)} "
        "AND x.status = 'ok'"
    )


def _unknown_evidence(what: str) -> str:
    what = what.replace("'", "''")
    return (f"'{what} unknown (' || CASE WHEN i.status IS NULL THEN 'no image' WHEN i.status <> 'ok' "
            "THEN 'image ' || i.status ELSE 'not classified' END || '; the rule treats unknown as a hit)'")


_OP_TEXT = {">": ">", ">=": "≥", "<": "<", "<=": "≤"}


def rule_sql(rule) -> str:
    """SELECT sample_id, score DOUBLE, evidence VARCHAR for every sample a classifier rule hits.

    ``classifier_score``: score is the stored score (NULL for an unknown hit); evidence e.g.
    ``nudenet FEMALE_BREAST_EXPOSED 0.83 ≥ 0.6``. ``ocr_text``: score is the OCR mean
    confidence; evidence e.g. ``OCR text "shutterstock" (conf 0.91)``.
    """
    spec = spec_of(rule)
    cand = candidates_sql(rule)
    if rule.kind == "classifier_score":
        summary = SUMMARY_LABEL[spec.name]
        ran = scores_sql(spec.key, summary)
        if rule.label == summary:
            score = "sc.score"
            name = f"coalesce(json_extract_string(sc.detail, '$.class'), {lit(summary)})"
        else:  # one class: its max score, 0.0 when the image was classified and it was not detected
            score = f"coalesce(lb.score, CASE WHEN sc.sample_id IS NOT NULL THEN 0.0 END)"
            name = lit(rule.label)
        hit = f"{score} {rule.op} {rule.value!r}"
        unknown = " OR sc.sample_id IS NULL" if rule.unknown == "flag" else ""
        label_join = "" if rule.label == summary else (
            f"LEFT JOIN ({scores_sql(spec.key, rule.label)}) lb ON lb.sample_id = c.sample_id ")
        return (
            f"SELECT c.sample_id, {score} AS score, CASE WHEN sc.sample_id IS NULL THEN "
            f"{_unknown_evidence(spec.name + ' ' + rule.label)} ELSE '{spec.name} ' || {name} || ' ' || "
            f"printf('%.2f', {score}) || ' {_OP_TEXT[rule.op]} {rule.value}' END AS evidence "
            f"FROM ({cand}) c LEFT JOIN ({ran}) sc ON sc.sample_id = c.sample_id {label_join}"
            f"LEFT JOIN images i ON i.sample_id = c.sample_id WHERE ({hit}){unknown}"
        )
    if rule.kind == "ocr_text":
        words, regex = ocr_patterns(rule)
        text = "nfc_normalize(sc.detail)"
        conds, parts = [], []
        if words:
            conds.append(f"regexp_matches({text}, {lit(words)})")
            parts.append(f"nullif(regexp_extract({text}, {lit(words)}, 1), '')")
        if regex:
            conds.append(f"regexp_matches({text}, {lit(regex)})")
            parts.append(f"regexp_extract({text}, {lit(regex)}, 0)")
        matched = parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})"
        hit = f"sc.detail IS NOT NULL AND ({' OR '.join(conds)})"
        unknown = " OR sc.sample_id IS NULL" if rule.unknown == "flag" else ""
        return (
            f"SELECT c.sample_id, sc.score, CASE WHEN sc.sample_id IS NULL THEN {_unknown_evidence('OCR text')} "
            f"ELSE 'OCR text \"' || replace({matched}, chr(10), ' / ') || '\" (conf ' || "
            f"coalesce(printf('%.2f', sc.score), '?') || ')' END AS evidence "
            f"FROM ({cand}) c LEFT JOIN ({scores_sql(spec.key, 'text')}) sc ON sc.sample_id = c.sample_id "
            f"LEFT JOIN images i ON i.sample_id = c.sample_id WHERE ({hit}){unknown}"
        )
    raise TypeError(f"unhandled rule kind {rule.kind}")  # pragma: no cover


def known_sql(rule) -> str:
    """SELECT sample_id, known BOOLEAN for every candidate of a classifier rule
    (:func:`candidates_sql`): ``known`` when a usable score row is stored for the sample's image
    (what :func:`rule_sql` reads); no image, an undecodable one, a classifier error or not yet
    classified is unknown."""
    spec = spec_of(rule)
    return (f"SELECT c.sample_id, sc.sample_id IS NOT NULL AS known FROM ({candidates_sql(rule)}) c "
            f"LEFT JOIN ({scores_sql(spec.key, SUMMARY_LABEL[spec.name])}) sc ON sc.sample_id = c.sample_id")


def _todo_sql(key: str, cands: list[str]) -> str:
    """Samples among the candidates with a decoded image and no row under ``key`` for those bytes."""
    union = "SELECT sample_id FROM samples" if any(c is None for c in cands) else \
        " UNION ".join(f"SELECT sample_id FROM ({c})" for c in cands)
    return (
        f"SELECT s.sample_id, s.image_ref, i.sha256 FROM samples s JOIN images i USING (sample_id) "
        f"WHERE i.status = 'ok' AND s.image_ref IS NOT NULL AND s.sample_id IN ({union}) AND NOT EXISTS ("
        f"SELECT 1 FROM image_scores x WHERE x.sample_id = s.sample_id AND x.classifier = {lit(key)} "
        "AND x.sha256 = i.sha256) ORDER BY s.sample_id"
    )


def _jobs(packs: Iterable) -> dict[Spec, list[str | None]]:
    """Classifier configuration → candidate SQL of each rule needing it (None = every sample)."""
    jobs: dict[Spec, list[str | None]] = {}
    for pack in packs:
        for rule in pack.rules:
            if is_classifier_rule(rule):
                jobs.setdefault(spec_of(rule), []).append(candidates_sql(rule) if rule.only_if_hit else None)
    return jobs


def pending(ws, rule) -> int:
    """Candidates of ``rule`` with a decoded image but no stored score yet (what
    :func:`ensure_scores` would classify for it); nothing is computed or written."""
    spec = spec_of(rule)
    return int(ws.scalar(f"SELECT count(*) FROM ({_todo_sql(spec.key, [candidates_sql(rule) if rule.only_if_hit else None])})"))


# ----------------------------------------------------------------------------------------------
# running the models


_MODELS: dict[str, Any] = {}


def load_classifier(name: str):
    """The loaded model (once per process). Raises ConfigError naming the package when missing."""
    if name not in _MODELS:
        try:
            if name == "nudenet":
                from nudenet import NudeDetector

                _MODELS[name] = NudeDetector()
            else:
                from rapidocr_onnxruntime import RapidOCR

                _MODELS[name] = RapidOCR
        except ImportError as e:
            raise ConfigError(f"the {name} classifier needs the PyPI package {_PACKAGE[name]!r} "
                              f"(pip install {_PACKAGE[name]}): {e}") from None
    return _MODELS[name]


_OCR: dict[tuple, Any] = {}


def _ocr_engine(max_side: int, min_confidence: float):
    """A RapidOCR instance whose text detector runs at long side ≤ ``max_side`` (its default,
    ``limit_type: min`` / 736, upscales every small image to a 736 px short side)."""
    k = (max_side, min_confidence)
    if k not in _OCR:
        RapidOCR = load_classifier("rapidocr")
        _OCR[k] = RapidOCR(det_limit_type="max", det_limit_side_len=max_side, text_score=min_confidence,
                           print_verbose=False)
    return _OCR[k]


@dataclass
class ScoreRow:
    """One ``image_scores`` row of a classified image (its sample, key and sha256 are added on insert)."""

    label: str
    score: float | None
    detail: str | None
    status: str = "ok"


def _load(image_ref: str, max_pixels: int, long_side: int | None):
    """Bytes → (sha256, Decoded, RGB PIL image or None), through :mod:`curate.media.images`;
    downscaled (Lanczos) to ``long_side`` px on the long side when larger."""
    from PIL import Image

    try:
        data = read_ref(image_ref)
    except (ValueError, OSError) as e:
        return None, Decoded("missing", f"{type(e).__name__}: {e}"), None
    sha = hashlib.sha256(data).hexdigest() if data is not None else None
    res, im = open_image(data, max_pixels=max_pixels, draft=long_side)
    if im is None:
        return sha, res, None
    im = im.convert("RGB") if im.mode != "RGB" else im
    if long_side and max(im.size) > long_side:
        s = long_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.LANCZOS)
    return sha, res, im


def classify_nudenet(res, im) -> list[ScoreRow]:
    """NudeNet on one decoded image → rows (summary ``nsfw`` + one per detected class).

    Args:
        res: the loader's :class:`curate.media.images.Decoded` (its width/height: the oriented
            full size, used to express boxes in full-size pixels).
        im: RGB PIL image (possibly downscaled).
    """
    bgr = np.ascontiguousarray(np.asarray(im)[..., ::-1])  # nudenet expects cv2.imread's BGR order
    dets = load_classifier("nudenet").detect(bgr)
    sx = (res.width or im.size[0]) / im.size[0]
    sy = (res.height or im.size[1]) / im.size[1]
    out = []
    for d in dets:
        x, y, w, h = d["box"]
        out.append({"class": d["class"], "score": round(float(d["score"]), 4),
                    "box": [round(x * sx), round(y * sy), round(w * sx), round(h * sy)]})
    out.sort(key=lambda d: (-d["score"], d["class"]))
    exposed = [d for d in out if d["class"] in NUDENET_EXPOSED]
    top = exposed[0] if exposed else None
    rows = [ScoreRow("nsfw", top["score"] if top else 0.0, json.dumps({"class": top["class"] if top else None,
                                                                    "detections": out}))]
    for cls in sorted({d["class"] for d in out}):
        mine = [d for d in out if d["class"] == cls]
        rows.append(ScoreRow(cls, max(d["score"] for d in mine), json.dumps([d["box"] for d in mine])))
    return rows


def classify_ocr(im, max_side: int, min_confidence: float) -> list[ScoreRow]:
    """RapidOCR on one RGB PIL image (long side ≤ ``max_side``) → one ``text`` row: the lines
    (confidence ≥ ``min_confidence``) in reading order joined by newlines, and their mean
    confidence (NULL when no text)."""
    bgr = np.ascontiguousarray(np.asarray(im)[..., ::-1])  # ndarray input is taken as BGR
    result, _ = _ocr_engine(max_side, min_confidence)(bgr)
    lines = [(str(t).strip(), float(c)) for _, t, c in (result or []) if str(t).strip()]
    if not lines:
        return [ScoreRow("text", None, "")]
    return [ScoreRow("text", round(sum(c for _, c in lines) / len(lines), 4), "\n".join(t for t, _ in lines))]


def _classify(spec: Spec, image_ref: str, max_pixels: int) -> tuple[str | None, list[ScoreRow]]:
    s = dict(spec.settings)
    side = NUDENET_RESOLUTION if spec.name == "nudenet" else s["max_side"]
    sha, res, im = _load(image_ref, max_pixels, side)
    label = SUMMARY_LABEL[spec.name]
    if im is None:
        return sha, [ScoreRow(label, None, f"{res.status}: {res.detail}", res.status)]
    try:
        if spec.name == "nudenet":
            return sha, classify_nudenet(res, im)
        return sha, classify_ocr(im, s["max_side"], s["min_confidence"])
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - one odd image must not stop the stage
        return sha, [ScoreRow(label, None, f"{type(e).__name__}: {e}", "classifier_error")]


def _insert(ws, key: str, batch: list[tuple[int, str | None, list[ScoreRow]]]) -> None:
    import pyarrow as pa

    rows = [(sid, key, r.label, r.score, r.detail, r.status, sha) for sid, sha, rs in batch for r in rs]
    s = pa.string()
    schema = pa.schema([("sample_id", pa.int64()), ("classifier", s), ("label", s), ("score", pa.float64()),
                        ("detail", s), ("status", s), ("sha256", s)])
    t = pa.table([pa.array(list(c), type=f.type) for c, f in zip(zip(*rows), schema)], schema=schema)
    with ws.transaction() as con:
        con.register("_score_batch", t)
        try:
            ids = [sid for sid, _, _ in batch]
            con.execute("DELETE FROM image_scores WHERE classifier = ? AND sample_id IN (SELECT unnest(?))", [key, ids])
            con.execute(f"INSERT INTO image_scores ({', '.join(schema.names)}) SELECT * FROM _score_batch")
        finally:
            con.unregister("_score_batch")


def local_batches(spec: Spec, todo: list[tuple], n: int, max_pixels: int):
    """Yield, per ``n`` candidates (sample_id, image_ref, …) of ``todo``, the list of
    (sample_id, sha256 of the bytes or None, rows) that :func:`_insert` stores — in this process."""
    for k in range(0, len(todo), n):
        yield [(item[0], *_classify(spec, item[1], max_pixels)) for item in todo[k:k + n]]


#: where batches are classified: (ws, spec, todo, n, max_pixels) → the batches :func:`local_batches`
#: yields for the same arguments (e.g. :func:`curate.stages.flag.distributed.classify_batches`)
Batches = Callable[[Any, Spec, list[tuple], int, int], Iterator[list[tuple]]]


def ensure_scores(ws, packs: Iterable, *, max_pixels: int | None = None,
                  batch_size: dict[str, int] | None = None, batches: Batches | None = None) -> dict[str, dict[str, Any]]:
    """Classify every candidate sample that the classifier rules of ``packs`` need and that has
    no stored score yet; store the rows in ``image_scores`` (one transaction per batch).

    Args:
        ws: the workspace (:class:`curate.store.catalog.Workspace`).
        packs: loaded rule packs; rules of other kinds are ignored.
        max_pixels: decode limit (header width × height, pixels); default the loader's.
        batch_size: samples per committed batch per classifier name (default :data:`BATCH`).
        batches: where to classify (see :data:`Batches`); the flag stage passes the Ray actor
            pool's (:func:`curate.stages.flag.distributed.classify_batches`) for ``engine: ray``,
            whose batches are stored here. None = :func:`local_batches`, in this process.

    Returns:
        Per classifier key: ``{'classifier', 'candidates_to_do', 'classified', 'failed',
        'seconds', 'images_per_s', 'settings'}`` (``failed``: images the loader or the model
        could not handle; they have a non-'ok' row and count as unknown).

    Raises:
        ConfigError: a classifier's package is not installed.
    """
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    sizes = {**BATCH, **(batch_size or {})}
    out: dict[str, dict[str, Any]] = {}
    jobs = _jobs(packs)
    if jobs:  # rows for bytes that are no longer the sample's image can never be used again
        ws.con.execute("DELETE FROM image_scores x WHERE NOT EXISTS (SELECT 1 FROM images i WHERE "
                       "i.sample_id = x.sample_id AND i.sha256 = x.sha256)")
    for spec, cands in jobs.items():
        key = spec.key
        todo = ws.q(_todo_sql(key, cands))
        counters = {"classifier": spec.name, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in spec.settings},
                    "candidates_to_do": len(todo), "classified": 0, "failed": 0}
        t0 = time.perf_counter()
        n = sizes[spec.name]
        if todo and batches is not None:  # same batches, classified elsewhere (e.g. by Ray actors)
            done = batches(ws, spec, todo, n, max_pixels)
        else:
            if todo:
                load_classifier(spec.name)  # load (or fail with the install hint) before the first batch
            done = local_batches(spec, todo, n, max_pixels)
        with bar(total=len(todo), desc=f"[flag] {spec.name}", unit="img") as pb:
            for batch in done:  # one transaction per batch: a killed run keeps the finished ones
                _insert(ws, key, batch)
                counters["classified"] += len(batch)
                counters["failed"] += sum(rows[0].status != "ok" for _, _, rows in batch)
                pb.update(len(batch))
        dt = time.perf_counter() - t0
        counters["seconds"] = round(dt, 3)
        counters["images_per_s"] = round(counters["classified"] / dt, 2) if counters["classified"] and dt > 0 else None
        out[key] = counters
    return out
