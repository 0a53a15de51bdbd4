"""Caption duplicates and template captions, counted per sample (curate.media.captions)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from curate import api
from curate.media.captions import compute
from curate.config import RunConfig


def test_caption_groups_and_templates_counted_per_sample(tmp_path):
    caps = [
        "Photo of John Smith in 1999", "Photo of Ann Lee in 2004", "Photo of Ann Lee in 2004",  # template, 2 variants
        "a red dress", "A  red dress ", "a red dress",  # one caption, three URLs (images)
        "sunset", None, "  ",
    ]
    urls = [f"https://c.example/{i}.jpg" for i in range(len(caps))]
    pq.write_table(pa.table({"URL": urls, "TEXT": caps}), tmp_path / "c.parquet")
    cfg = RunConfig.model_validate({"sources": [{"name": "c", "metadata": "c.parquet"}]})
    cfg.base_dir = str(tmp_path)
    api.run_one(tmp_path / "ws", "ingest", cfg)
    ws = api.open_workspace(tmp_path / "ws", cfg)
    try:
        c = compute(ws)
        rows = ws.q("SELECT source_row, caption_count, caption_images, template_count, template_variants "
                    "FROM caption_stats JOIN samples USING (sample_id) ORDER BY source_row")
    finally:
        ws.close()
    by_row = {r[0]: r[1:] for r in rows}
    assert sorted(by_row) == [0, 1, 2, 3, 4, 5, 6]  # NULL and blank captions have no row
    assert by_row[0] == (1, 1, 3, 2) and by_row[1] == (2, 2, 3, 2)
    assert by_row[3] == by_row[4] == (3, 3, 3, 1)  # normalisation: case and spaces
    assert by_row[6] == (1, 1, 1, 1)
    assert c["caption_groups_repeated"] == 2 and c["caption_groups_many_images"] == 2
    assert c["templates_with_variants"] == 1 and c["samples_in_template_groups"] == 3
    assert c["top_captions"][0] == {"caption": "a red dress", "caption_chars": 11, "samples": 3, "images": 3}
