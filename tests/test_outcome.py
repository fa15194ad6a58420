"""The end of a training run says what it bought (input → output, each metric) and where its
sample grids are."""
from __future__ import annotations

import logging

from src.engine.runner import outcome_line, report_outcome

METRICS = {"count": 6, "psnr": 19.104, "ssim": 0.6012, "ciede2000": 9.87,
           "reference_psnr": 11.316, "reference_ssim": 0.5551, "reference_ciede2000": 22.561}


def test_outcome_line_puts_each_metric_after_the_inputs():
    line = outcome_line(METRICS)
    assert line == ("PSNR 11.32 dB → 19.10 dB (higher is better), SSIM 0.555 → 0.601 (higher "
                    "is better), CIEDE2000 22.56 → 9.87 (lower is better)")
    no_ref = outcome_line({"psnr": 20.0, "ssim": 0.5, "ciede2000": 3.0})
    assert no_ref.startswith("PSNR 20.00 dB (higher is better), SSIM 0.500")
    assert outcome_line({}) == "" and outcome_line({"count": 0, "psnr": None}) == ""


def test_report_names_the_grid_in_train_url_and_on_disk(tmp_path, monkeypatch, caplog):
    samples = tmp_path / "out" / "samples"
    samples.mkdir(parents=True)
    for name in ("b.png", "a.png"):
        (samples / name).write_bytes(b"png")
    monkeypatch.setenv("OBS_MOCK_ROOT", str(tmp_path / "obs"))
    with caplog.at_level(logging.INFO, logger="src.engine.runner"):
        report_outcome(METRICS, "obs://demo/aecrnet/out", str(tmp_path / "out"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "result on 6 validation images, input → output: PSNR 11.32 dB → 19.10 dB" in text
    assert ("sample grid (input | output | target): obs://demo/aecrnet/out/samples/a.png (%s) "
            "and 1 more beside it" % (tmp_path / "obs" / "demo" / "aecrnet" / "out" / "samples"
                                       / "a.png")) in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.engine.runner"):
        report_outcome(METRICS, str(tmp_path / "out"), str(tmp_path / "out"))  # a local train_url
    assert "sample grid (input | output | target): %s and 1 more" % (samples / "a.png") in \
        caplog.text
