"""Prompt files: one caption per line or COCO captions JSON; fixed-seed draws; clear errors."""

from __future__ import annotations

import json

import pytest

from mct.data.prompts import load_prompts, read_prompt_file, sample_prompts
from mct.errors import DataError


def test_text_file_skips_blank_lines_and_normalises_space(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("\ufeffa cat\n\n  two   dogs \r\nune tête\n   \n", encoding="utf-8")
    assert [x.caption for x in read_prompt_file(p)] == ["a cat", "two dogs", "une tête"]
    assert load_prompts(p, None) == ["a cat", "two dogs", "une tête"]


def test_fixed_seed_draw_without_replacement(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("\n".join(f"caption {i}" for i in range(1000)), encoding="utf-8")
    a = load_prompts(p, 300, seed=0)
    assert a == load_prompts(p, 300, seed=0)
    assert a != load_prompts(p, 300, seed=1)
    assert len(a) == len(set(a)) == 300
    assert a != [f"caption {i}" for i in range(300)]  # a random draw, not the head of the file


def test_coco_captions_json(tmp_path):
    anns = [{"image_id": 10 + i % 3, "id": 100 - i, "caption": f" A photo {i}.\n"} for i in range(9)]
    p = tmp_path / "captions_val2014.json"
    p.write_text(json.dumps({"info": {}, "images": [], "annotations": anns}), encoding="utf-8")
    prompts = read_prompt_file(p)
    assert len(prompts) == 9
    assert prompts[0].caption == "A photo 8." and prompts[0].image_id == 10 + 8 % 3  # sorted by annotation id
    assert sorted(load_prompts(p, 9, seed=3)) == sorted(f"A photo {i}." for i in range(9))


def test_fewer_prompts_than_requested(tmp_path, caplog):
    p = tmp_path / "p.txt"
    p.write_text("a\nb\nc\n", encoding="utf-8")
    assert sorted(load_prompts(p, 30000)) == ["a", "b", "c"]
    assert "fewer than the 30000 requested" in caplog.text
    with pytest.raises(DataError, match="holds 3 captions, fewer than the 5 requested"):
        load_prompts(p, 5, allow_fewer=False)
    with pytest.raises(DataError, match=">= 1"):
        sample_prompts(read_prompt_file(p), 0)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"prompt file .*nope\.txt does not exist"):
        load_prompts(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a directory"):
        load_prompts(tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n   \n", "{\"annotations\": []}"])
def test_empty_file(tmp_path, content):
    p = tmp_path / ("p.json" if content.startswith("{") else "p.txt")
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="is empty: it holds no caption"):
        load_prompts(p)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("a caf\xe9 by the sea\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"is not UTF-8 text \(invalid byte 0xe9 at offset 5\)"):
        load_prompts(p)


def test_bad_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{\"annotations\": [", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_prompts(p)
    p.write_text(json.dumps({"images": []}), encoding="utf-8")
    with pytest.raises(DataError, match="not a COCO captions file"):
        load_prompts(p)
    p.write_text(json.dumps({"annotations": [{"id": 1}]}), encoding="utf-8")
    with pytest.raises(DataError, match="annotation 0 has no 'caption'"):
        load_prompts(p)
