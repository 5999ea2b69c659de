"""Small project-wide rules: one version, one progress-bar rule, one block-I/O reader."""

import importlib.metadata

import torch

import steerlab
from steerlab.blocks import input_hidden, output_hidden, replace_input_hidden, replace_output_hidden
from steerlab.progress import AUTO_AFTER_S, progress_bar


def test_version_is_written_in_one_place():
    assert importlib.metadata.version("steerlab") == steerlab.__version__


def test_progress_rule():
    assert progress_bar(range(3), "x", progress=False).disable
    shown = progress_bar(range(3), "x", progress=True)
    assert not shown.disable and shown.delay == 0
    auto = progress_bar(range(3), "x")  # default: only once the loop has run AUTO_AFTER_S seconds
    assert not auto.disable and auto.delay == AUTO_AFTER_S
    assert list(auto) == [0, 1, 2]


def test_block_io_helpers_keep_the_container():
    h, h2, extra = torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.full((1,), 7.0)
    assert output_hidden(h) is h and replace_output_hidden(h, h2) is h2
    out = replace_output_hidden((h, extra), h2)
    assert isinstance(out, tuple) and out[0] is h2 and out[1] is extra
    assert input_hidden((h,), {}) is h and input_hidden((), {"hidden_states": h}) is h
    args, kwargs = replace_input_hidden((), {"hidden_states": h, "x": 1}, h2)
    assert args == () and kwargs["hidden_states"] is h2 and kwargs["x"] == 1
    args, kwargs = replace_input_hidden((h, extra), {}, h2)
    assert args[0] is h2 and args[1] is extra


def test_every_result_object_follows_the_report_convention(tmp_path):
    import json
    from dataclasses import dataclass

    from steerlab.evaluate.card import DoseResponseCard
    from steerlab.evaluate.files import Report
    from steerlab.evaluate.generalisation import GeneralisationReport
    from steerlab.evaluate.reliability import ReliabilityReport
    from steerlab.evaluate.sweep import SweepResult
    from steerlab.pace.evaluation import PaceEval

    for cls in (SweepResult, ReliabilityReport, GeneralisationReport, DoseResponseCard, PaceEval):
        assert issubclass(cls, Report) and "save" not in vars(cls), cls

    @dataclass
    class Tiny(Report):
        values: list[float]
        default_stem = "tiny"

        def title(self):
            return "Tiny"

        def table(self):
            return "| v |\n|---|\n" + "\n".join(f"| {v} |" for v in self.values)

        def plot(self, path):
            from steerlab.evaluate.files import pyplot

            plt = pyplot()
            fig, ax = plt.subplots()
            ax.plot(self.values)
            fig.savefig(path)
            plt.close(fig)

        def extra_json(self):
            return {"total": sum(self.values)}

    md = Tiny([1.0, 2.0]).save(tmp_path / "out")
    assert md == tmp_path / "out" / "tiny.md"
    assert json.loads(md.with_suffix(".json").read_text()) == {"values": [1.0, 2.0], "total": 3.0}
    assert md.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md.read_text().startswith("# Tiny\n\n| v |") and "![tiny](tiny.png)" in md.read_text()
    assert Tiny([3.0]).save(tmp_path / "out", "other").name == "other.md"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "other.json", "other.md", "other.png", "tiny.json", "tiny.md", "tiny.png"]  # no temporaries left
