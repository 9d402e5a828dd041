"""The README's code snippets, run straight out of README.md.

Every ```python block is found by an anchor (a line of its own code), executed with the
smallest context the README's prose implies (a random image for ``pixels``, a tiny model where
the block builds a full-size one), and checked against what its comments say. A renamed
function, argument, attribute or dict key in the package therefore fails here, at the README's
own line numbers (the block is compiled as ``README.md`` with its real line offsets).

Shell blocks: every ``efficientsam3 ...`` / ``efficientsam3-train ...`` command line in a block or
an inline code span must use a subcommand and ``--flags`` that the CLI's argparse parsers know;
``efficientsam3 demo`` is run for real (3 frames) and must write the files the README names.
Blocks that need ROS 2, a GPU, TensorRT, the network or an hour of training are skipped, each
with its reason. A ```python block that no test knows fails ``test_every_python_block_is_run``:
a new snippet must be added to ``PYTHON_BLOCKS`` (or to ``SKIPPED_PYTHON`` with a reason).

CPU only, no network (HF_HUB_OFFLINE=1), about 40 s on 2 cores.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


REPO = Path(__file__).resolve().parents[1]  # the README's relative paths (models/demo/...) are from here
README = REPO / "README.md"
TEXT = README.read_text(encoding="utf-8")
DEMO_MODEL = REPO / "models" / "demo" / "model.safetensors"
DEMO_TRACKER = REPO / "models" / "demo" / "tracker.safetensors"


# --------------------------------------------------------------------------- README parsing
@dataclass(frozen=True)
class Block:
    line: int  # 1-based README line of the first line of code (after the opening fence)
    lang: str
    code: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang or 'plain'})"


def readme_blocks(text: str = TEXT) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start, body = len(m.group(1)), m.group(2), i + 2, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        blocks.append(Block(start, lang, "\n".join(body) + "\n"))
        i += 1
    return blocks


BLOCKS = readme_blocks()


def find_block(anchor: str, lang: str = "python") -> Block:
    found = [b for b in BLOCKS if b.lang == lang and anchor in b.code]
    assert len(found) == 1, (
        f"expected exactly one ```{lang} block of {README} containing {anchor!r}, found "
        f"{[str(b) for b in found]}: was the snippet renamed or removed? update the anchor"
    )
    return found[0]


def run_block(block: Block, ns: dict, replace: list[tuple[str, str]] = ()) -> dict:
    """Exec a block in ``ns`` so that tracebacks show README.md line numbers.

    ``replace``: (old, new) substitutions on one line each (line numbers are kept), for a full-size
    model swapped for a tiny one and the like; each must apply, so a stale one is noticed.
    """
    code = block.code
    for old, new in replace:
        assert old in code, f"{block}: substitution {old!r} no longer applies; update the test"
        assert "\n" not in old and "\n" not in new
        code = code.replace(old, new)
    compiled = compile(code, str(README), "exec").replace(co_firstlineno=block.line)  # README line numbers
    exec(compiled, ns)  # noqa: S102 - the README's own code
    return ns


def inline_spans(text: str = TEXT) -> list[str]:
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    return [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", outside)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models, shared cores (conftest)


# --------------------------------------------------------------------------- python blocks
PYTHON_BLOCKS: dict[str, str] = {}  # anchor -> test that runs it
SKIPPED_PYTHON: dict[str, str] = {}  # anchor -> reason


def runs(anchor: str):
    def mark(fn):
        PYTHON_BLOCKS[anchor] = fn.__name__
        fn.anchor = anchor
        return fn

    return mark


@runs("concepts = model.encode_concepts(")
def test_models_python_api(pixels):
    """## Models / Python API. Added: ``pixels``, ``rgb_uint8_image``; es-ev-s at 504 -> es-ev-tiny at 112."""
    block = find_block(test_models_python_api.anchor)
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    ns = run_block(
        block,
        {"pixels": pixels, "rgb_uint8_image": rgb},
        replace=[('build_model("es-ev-s", input_size=504)', 'build_model("es-ev-tiny", input_size=112)')],
    )
    assert tuple(ns["out"].scores.shape)[0] == 2  # [K, Q] for the 2 phrases
    assert type(ns["result"]).__name__ == "FrameResult" and ns["result"].image_size == (96, 128)
    # random weights score under 0.5, so the block's loop body ran on nothing: run it on instances
    loop = re.search(r"^for inst in result\.instances:\n(?:[ \t]+.*\n)+", block.code, re.M)
    assert loop, f"{block}: the `for inst in result.instances:` loop is gone; update the test"
    assert (
        ns["seg"].tracker.config.new_det_threshold == ns["model"].config.operating_point.new_track_threshold
    )
    seg = ns["ConceptSegmenter"](ns["model"], score_threshold=0.0)
    seg.set_concepts(["person"])
    ns["result"] = seg.process(rgb)
    assert ns["result"].instances
    line = block.line + block.code[: loop.start()].count("\n")
    exec(compile(loop.group(0), str(README), "exec").replace(co_firstlineno=line), ns)  # noqa: S102


@runs("def on_instances(msg)")
def test_reading_the_masks():
    """### Reading the masks. Added: a ConceptInstanceArray built by the package's own converter."""
    from efficientsam3_ros.pipeline.results import FrameResult, Instance
    from efficientsam3_ros.ros import messages

    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:30] = True
    inst = Instance(0, "red mug", 0.9, np.array([5, 10, 30, 20], np.float32), mask, track_id=7)
    msg = messages.frame_result_to_msg(FrameResult([inst], (48, 64), {0: "red mug"}, {"total": 1.0}))
    ns = run_block(find_block(test_reading_the_masks.anchor), {})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ns["on_instances"](msg)
    assert out.getvalue().split()[:3] == ["red", "mug", "7"] and out.getvalue().split()[-1] == "250"
    assert messages.msg_to_frame_result(msg).instances[0].mask.sum() == 250  # the offline decoder it names


@runs("select_backend(")
def test_runtime_backends(pixels, tmp_path, monkeypatch):
    """### Backends. Added: ``model`` (es-ev-tiny), ``pixels``, token ids; the ONNX cache goes to a tmp HOME."""
    from efficientsam3_ros.modeling import build_model

    monkeypatch.setenv("HOME", str(tmp_path))  # RuntimeOptions' default cache is ~/.cache/efficientsam3_ros
    model = build_model("es-ev-tiny")
    input_ids, attention_mask = model.tokenize(["person", "red mug", "pallet"])
    block = find_block(test_runtime_backends.anchor)
    ns = run_block(
        block,
        {"model": model, "pixels": pixels, "input_ids": input_ids, "attention_mask": attention_mask},
    )
    assert type(ns["feats"]).__name__ == "ImageFeatures" and len(ns["feats"].fpn) == 3  # "fpn=3 levels"
    assert ns["embeds"].device.type == "cpu" and str(ns["embeds"].dtype) == "torch.float32"
    assert type(ns["out"]).__name__ == "DetectorOutput"
    documented = re.search(r"backend\.info\s*#\s*(\{.*\})", block.code)
    assert documented, f"{block}: the commented backend.info example is gone; update the test"
    assert set(re.findall(r'"(\w+)":', documented.group(1))) <= set(ns["backend"].info)


@runs("tracker.update(detections")
def test_tracking_api():
    """## Tracking. Added: ``detections`` and the names the comments stand for."""
    from efficientsam3_ros.pipeline.results import Instance

    def det(cid, x, score):
        m = np.zeros((60, 80), bool)
        m[10:30, x : x + 20] = True
        return Instance(cid, f"c{cid}", score, np.array([x, 10, x + 20, 30], np.float32), m)

    block = find_block(test_tracking_api.anchor)
    ns = {"detections": [det(0, 5, 0.9), det(1, 50, 0.95)], "concept_id": 1}
    ns.update(track_id=1, bool_mask=det(1, 52, 0.9).mask, score=0.8)
    ns = run_block(block, ns)
    states = {i.state.name for i in ns["update"].instances}
    assert states <= {"NEW", "TRACKED", "PREDICTED"}
    stats = ns["tracker"].stats.as_dict()
    documented = re.search(r"stats\.as_dict\(\)\s*#\s*(.*)", block.code)
    assert documented, f"{block}: the stats comment is gone; update the test"
    for key in (k.strip() for k in documented.group(1).split(",")):
        if key.endswith("*"):
            assert any(s.startswith(key[:-1]) for s in stats), key
        else:
            assert key in stats, f"{block}: stats.as_dict() has no {key!r}: {sorted(stats)}"


@runs("InstancePredictor(model, tracker)")
def test_predict_inst(pixels):
    """### predict_inst usage. Added: ``import torch`` (the block uses torch.tensor), pixels and prompts."""
    import torch

    ns = {"torch": torch, "pixels": pixels, "x": 50, "y": 40, "x0": 20, "y0": 20, "x1": 80, "y1": 90}
    ns["pts"] = torch.tensor([[[50, 40], [60, 60]], [[30, 30], [70, 70]]])
    ns["labels"] = torch.tensor([[1, 0], [1, 1]])
    ns["boxes"] = torch.tensor([[20, 20, 80, 90], [10, 10, 50, 50]])
    ns = run_block(find_block(test_predict_inst.anchor), ns)
    masks, iou, low_res = ns["masks"], ns["iou"], ns["low_res"]  # the last call: B = 2 prompts
    assert masks.dtype == torch.bool and masks.shape[:2] == iou.shape and masks.shape[-1] == 112
    assert low_res.shape[-1] == 4 * (112 // 14)  # [.., 4g, 4g]


@runs("load_tracker(")
def test_memory_tracking_in_the_pipeline(monkeypatch):
    """## Memory tracking in the pipeline. Run from the repository root (models/demo/...).

    Changed: ``from_name("es-ev-s", ...)`` (a zoo name: downloads 1.7 GB) -> es-ev-tiny;
    ``"tracker.safetensors"`` -> the demo's tracker. Added: ``model`` (the demo model) and the
    imports its comment names. The segmenter built by hand must track by the same rules as the
    one ``from_name`` builds (a bare ConceptTracker() ran SAM3's instead of the model's).
    """
    from efficientsam3_ros.modeling import load_tracker
    from efficientsam3_ros.pipeline import ConceptSegmenter, make_tracker
    from efficientsam3_ros.zoo import resolve_model

    monkeypatch.chdir(REPO)
    ns = {"ConceptSegmenter": ConceptSegmenter, "make_tracker": make_tracker, "load_tracker": load_tracker}
    ns["model"] = resolve_model(str(DEMO_MODEL))
    ns = run_block(
        find_block(test_memory_tracking_in_the_pipeline.anchor),
        ns,
        replace=[
            ('from_name("es-ev-s", memory="perceiver")', 'from_name("es-ev-tiny", memory="perceiver")'),
            ('load_tracker("tracker.safetensors"', f'load_tracker("{DEMO_TRACKER}"'),
        ],
    )
    assert ns["seg"].memory is not None
    own = ConceptSegmenter.from_name(str(DEMO_MODEL), memory="perceiver", memory_checkpoint=str(DEMO_TRACKER))
    assert ns["seg"].tracker.config == own.tracker.config
    assert ns["seg"].tracker.config.new_det_threshold == 0.4  # the demo model's, not SAM3's 0.7


@runs("evaluate_bag(EvalConfig(")
def test_eval_bag_python_api(tmp_path, monkeypatch):
    """eval-bag's Python API. Added: ``Path``, a 2-frame world bag at rec/ + gt.json on topic /cam;
    the demo model (EvalConfig's default es-ev-s is a download)."""
    from efficientsam3_ros.synthetic import write_rosbag

    bag, gt = write_rosbag(tmp_path / "w", num_frames=2, topic="/cam")
    shutil.move(bag, tmp_path / "rec")
    shutil.move(gt, tmp_path / "gt.json")
    monkeypatch.chdir(tmp_path)
    ns = run_block(
        find_block(test_eval_bag_python_api.anchor),
        {"Path": Path},
        replace=[('concepts=["red mug"],', f'concepts=["red mug"], model="{DEMO_MODEL}", progress=False,')],
    )
    assert ns["outcome"].exit_code == 0, ns["outcome"].report["stop"]
    assert callable(ns["score"])


@runs("render_scene(seed=0, config=cfg)")
def test_synthetic_world_api():
    """The synthetic world's Python API: self-contained. Changed: iter_video's 10_000 frames -> 2
    (after the loop the block reads the last frame's objects)."""
    ns = run_block(
        find_block(test_synthetic_world_api.anchor),
        {},
        replace=[("iter_video(seed=0, num_frames=10_000)", "iter_video(seed=0, num_frames=2)")],
    )
    frame = ns["frame"]
    assert frame.image.dtype == np.uint8 and frame.image.ndim == 3
    assert str(frame.track_map.dtype) == "int32"


def test_every_python_block_is_run():
    known = list(PYTHON_BLOCKS) + list(SKIPPED_PYTHON)
    orphans = [str(b) for b in BLOCKS if b.lang == "python" and not any(a in b.code for a in known)]
    assert not orphans, f"python blocks no test runs (add them to this file): {orphans}"


# --------------------------------------------------------------------------- C++ block
def test_cpp_rle_decoder_matches_pycocotools(tmp_path):
    """### Reading the masks, C++: compiled with g++ and compared with pycocotools on random masks."""
    from pycocotools import mask as mask_utils

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    block = find_block("decode_coco_rle", lang="cpp")
    (tmp_path / "rle.hpp").write_text(block.code)
    (tmp_path / "main.cpp").write_text(
        '#include "rle.hpp"\n#include <iostream>\nint main(){std::string s;uint32_t h,w;'
        "while(std::cin>>h>>w>>s){for(auto b:decode_coco_rle(s,h,w))std::cout<<int(b);std::cout<<'\\n';}}\n"
    )
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-o", str(tmp_path / "rle"), str(tmp_path / "main.cpp")], check=True
    )
    rng, masks, lines = np.random.default_rng(0), [], []
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        masks.append(m)
        lines.append(f"{h} {w} {mask_utils.encode(np.asfortranarray(m))['counts'].decode()}")
    out = subprocess.run(
        [str(tmp_path / "rle")], input="\n".join(lines) + "\n", capture_output=True, text=True
    )
    got = out.stdout.split()
    assert len(got) == len(masks)
    for m, g in zip(masks, got):
        assert np.array_equal(np.frombuffer(g.encode(), np.uint8).reshape(m.shape) - 48, m)


# --------------------------------------------------------------------------- shell blocks
SKIP_RULES = [  # (pattern in the block, reason)
    (r"\bros2 |\bcolcon\b|rosdep", "needs ROS 2"),
    (r"pip install", "installs packages (network); the venv under test is already installed"),
    (r"--device cuda|--format tensorrt", "needs a GPU / TensorRT"),
    (r"recipe\.sh", "trains the demo model for about an hour"),
    (r"python bench/", "a benchmark (minutes)"),
]


def cli_parsers():
    from efficientsam3_ros import cli
    from efficientsam3_ros.training import cli as train_cli

    def subparsers(parser):
        return {
            name: sub
            for action in parser._actions
            if action.__class__.__name__ == "_SubParsersAction"
            for name, sub in action.choices.items()
        }

    return subparsers(cli.build_parser()), train_cli.build_parser(), subparsers


def option_strings(parser, subparsers) -> set[str]:
    opts = {o for a in parser._actions for o in a.option_strings}
    for sub in subparsers(parser).values():
        opts |= option_strings(sub, subparsers)
    return opts


def readme_commands() -> list[tuple[str, str]]:
    """(where, command text) for every efficientsam3 / efficientsam3-train command the README shows."""
    out = []
    for b in BLOCKS:
        if b.lang in ("python", "cpp", "json"):
            continue
        cmd, start = None, 0
        for n, line in enumerate(b.code.splitlines()):
            stripped = line.strip()
            if re.match(r"^(\S+=\S+\s+)*efficientsam3(-train)?\s", stripped):
                if cmd:
                    out.append((f"README.md:{start}", cmd))
                cmd, start = re.sub(r"\s#.*$", "", stripped), b.line + n
            elif cmd and line[:1].isspace() and not stripped.startswith("#"):
                cmd += " " + re.sub(r"\s#.*$", "", stripped)
            else:
                if cmd:
                    out.append((f"README.md:{start}", cmd))
                cmd = None
        if cmd:
            out.append((f"README.md:{start}", cmd))
    for span in inline_spans():
        for m in re.finditer(r"(?:^|\s)(efficientsam3(?:-train)?\s+.*)$", span):
            out.append((f"inline `{span[:60]}`", m.group(1)))
    return out


def test_readme_commands_use_existing_subcommands_and_flags():
    subs, train, subparsers = cli_parsers()
    problems, checked = [], 0
    for where, cmd in readme_commands():
        words = cmd.split()
        if words[0] == "efficientsam3-train":
            opts = option_strings(train, subparsers)
        else:
            if len(words) < 2 or not re.fullmatch(r"[a-z][a-z-]*", words[1]):
                continue  # `efficientsam3 ...`, `efficientsam3 COMMAND`: placeholders
            if words[1] not in subs:
                problems.append(f"{where}: unknown subcommand {words[1]!r} in {cmd!r}")
                continue
            parser = subs[words[1]]
            nested = subparsers(parser)  # `models download ...`: that sub-subcommand's flags only
            if len(words) > 2 and words[2] in nested:
                parser = nested[words[2]]
            opts = option_strings(parser, subparsers)
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", cmd):
            checked += 1
            if flag not in opts:
                problems.append(f"{where}: {words[0]} {words[1]} has no {flag} ({cmd[:100]!r})")
    assert checked > 50, (
        f"only {checked} flags found: is the command parser still finding the README's commands?"
    )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("bash", "sh", "shell")], ids=str)
def test_shell_block(block):
    """bash blocks: skipped with a reason when they need ROS/GPU/network/hours; others are demo-run below."""
    for pattern, reason in SKIP_RULES:
        if re.search(pattern, block.code):
            pytest.skip(f"{block}: {reason}")
    # what remains is `efficientsam3 segment ...` with a released checkpoint: its flags are checked
    # by test_readme_commands_use_existing_subcommands_and_flags; running it needs the 1.7 GB file
    if "--checkpoint efficient_sam3_" in block.code:
        pytest.skip(f"{block}: needs the released es-ev-s checkpoint (a download); flags checked statically")
    pytest.fail(f"{block}: a bash block that no rule covers; run it in a test or add a skip rule")


def test_quick_start_demo_writes_what_the_readme_names(tmp_path):
    """Quick start's `efficientsam3 demo` (the main job), at 3 frames, in a scratch folder."""
    # this interpreter and this checkout (not whatever `efficientsam3` comes first on PATH)
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", PYTHONPATH=python_path)
    res = subprocess.run(
        [sys.executable, "-m", "efficientsam3_ros", "demo", "--frames", "3", "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    named = set(re.findall(r"efficientsam3_demo/[\w./-]*\w", TEXT)) | {"efficientsam3_demo/overlay.png"}
    assert "efficientsam3_demo/eval/report.html" in named
    missing = [p for p in sorted(named) if not (tmp_path / p).exists()]
    assert not missing, f"the README names {missing}, which `efficientsam3 demo` did not write"
    assert "summary" in res.stdout and "mean IoU" in res.stdout


# --------------------------------------------------------------------------- inline API names
CONFIG_PREFIXES = {"run", "data", "optim", "options", "model", "source", "stats", "info"}
FILE_SUFFIX = re.compile(
    r"\.(py|json|yaml|yml|md|png|gif|pt|safetensors|db3|mcap|html|sh|cache|engine|onnx|jpg|txt)$"
)


def test_dotted_api_names_in_the_prose_resolve():
    """`module.name` / `Class.attr` spans in the prose (e.g. `modeling.OperatingPoint`,
    `TrackerConfig.tiny`) must name something that exists. Heuristic: a span is checked when its
    first part is a module of the package (by dotted suffix) or a class/function it defines;
    config keys (`run.seed`) and file names are left out."""
    import efficientsam3_ros

    mods = {"efficientsam3_ros": efficientsam3_ros}
    for m in pkgutil.walk_packages(efficientsam3_ros.__path__, "efficientsam3_ros."):
        if m.name.endswith((".node", "__main__")):  # rclpy; entry points that run on import
            continue
        with contextlib.suppress(ImportError):
            mods[m.name] = importlib.import_module(m.name)
    top: dict[str, list] = {}
    for mod in mods.values():
        for n, o in vars(mod).items():
            if inspect.isclass(o) or inspect.isfunction(o):
                top.setdefault(n, []).append(o)

    def has(obj, attr):
        if hasattr(obj, attr):
            return True
        if inspect.isclass(obj):  # instance attributes and dataclass fields
            with contextlib.suppress(OSError, TypeError):
                src = inspect.getsource(obj)
                return re.search(rf"self\.{attr}\b|^\s+{attr}\s*:", src, re.M) is not None
        return False

    bad, checked = [], 0
    for span in sorted(set(inline_spans())):
        name = re.sub(r"\(.*\)$", "", span.strip())
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", name) or FILE_SUFFIX.search(name):
            continue
        parts = name.split(".")
        if parts[0] in CONFIG_PREFIXES:
            continue
        ok = None
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            cands = [n for n in mods if n == head or n.endswith("." + head)]
            if cands:
                obj, ok = mods[cands[0]], True
                for attr in parts[i:]:
                    if not has(obj, attr):
                        ok = False
                        break
                    obj = getattr(obj, attr, obj)
                break
        if ok is None and parts[0] in top:
            ok = any(has(o, parts[1]) for o in top[parts[0]])
        if ok is None:
            continue
        checked += 1
        if not ok:
            bad.append(span)
    assert checked > 30, f"only {checked} names checked"
    assert not bad, f"README names that do not resolve in the package: {bad}"
