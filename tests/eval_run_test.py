"""`minigpt eval`: a run's checkpoint named by --step, on the run's data or another dir."""

import html.parser
import json
import shutil

import numpy as np
import pytest

from minigpt_jax import data, eval_run, metrics, per_token
from minigpt_jax.errors import UsageError


def test_eval_repeats_the_runs_own_numbers_for_each_step(tiny_run):
    run_dir = tiny_run[0]
    evals = {r["step"]: r for r in metrics.read_metrics(run_dir) if r["kind"] == "eval"}
    best = min((evals[s]["val_loss"], s) for s in (4, 8))[1]
    for spec, step in (("latest", 8), ("4", 4), ("best", best)):
        got_step, results = eval_run.evaluate_checkpoint(run_dir, spec)
        assert got_step == step
        for key in ("train_loss", "val_loss", "val_loss_full", "val_bpc"):
            assert results[key] == pytest.approx(evals[step][key], rel=1e-5), (spec, key)


def test_a_bad_step_is_refused_before_the_data_is_read(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    with pytest.raises(UsageError, match="--step must be best, latest or one of the saved"):
        eval_run.evaluate_checkpoint(run_dir, "5", data_dir=str(tmp_path / "nowhere"))


def test_other_data_must_share_the_runs_vocabulary(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    data.prepare("abcabcabc" * 20, tmp_path / "abc", block_size=8)
    with pytest.raises(UsageError, match="other data than the run's vocabulary"):
        eval_run.evaluate_checkpoint(run_dir, data_dir=str(tmp_path / "abc"))
    same = tmp_path / "same"
    shutil.copytree(json.loads((run_dir / "config.json").read_text())["data"]["dir"], same)
    assert eval_run.evaluate_checkpoint(run_dir, data_dir=str(same))[0] == 8


class _Spans(html.parser.HTMLParser):
    """The spans of the page's #text div: (text, title) each."""

    def __init__(self):
        super().__init__()
        self.inside, self.spans = False, []

    def handle_starttag(self, tag, attrs):
        self.inside = self.inside or dict(attrs).get("id") == "text"
        if self.inside and tag == "span":
            self.spans.append(["", dict(attrs).get("title", "")])

    def handle_endtag(self, tag):
        self.inside = self.inside and tag != "div"

    def handle_data(self, text):
        if self.inside and self.spans:
            self.spans[-1][0] += text


def test_per_token_page_has_one_span_per_val_character_with_its_loss(tiny_run, tmp_path):
    run_dir, config = tiny_run
    page = tmp_path / "val.html"
    step, results = eval_run.evaluate_checkpoint(run_dir, "latest", per_token_html=page)
    meta = data.load_meta(config.data.dir)
    text = data.CharTokenizer.from_json(meta).decode(data.load_split(config.data.dir, "val"))
    parser = _Spans()
    parser.feed(page.read_text(encoding="utf-8"))
    assert [s for s, _ in parser.spans] == list(text)  # one span per character, in order
    assert parser.spans[0][1].startswith("no prediction")
    losses = [float(title.split()[1]) for _, title in parser.spans[1:]]
    # The colours are the full val pass, token by token: their mean is its loss.
    assert np.mean(losses) == pytest.approx(results["val_loss_full"], abs=1e-3)
    assert np.std(losses) > 0.1 and f"{results['val_loss_full']:.4f} nats" in page.read_text()


def test_per_token_render_escapes_and_scales():
    page = per_token.render("<a&b", np.array([0.0, 10.0, np.log(4)]), title="t", vocab_size=4)
    parser = _Spans()
    parser.feed(page)
    assert [s for s, _ in parser.spans] == ["<", "a", "&", "b"]
    assert "background:rgb(255,255,255)" in page and page.count("background:rgb(255,0,0)") >= 2
    with pytest.raises(ValueError, match="4 characters need 3 losses"):
        per_token.render("<a&b", np.zeros(2), title="t", vocab_size=4)
