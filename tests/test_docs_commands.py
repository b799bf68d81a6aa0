"""What the README and docs/ say runs, composes: every `fairseq-hydra-train` / `run_training.sh` command
shown there (fenced code, continuation lines joined) is composed with its overrides against the YAML it
names, as fairseq-hydra-train does (fairseq's structured config, then the task/model dataclasses), without
training; and every task option, and every `task.*=` / `model.*=` override mentioned in the prose, is a key of
every shipped YAML, so it is set as written (no `+`)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPES = sorted(p.stem for p in (ROOT / "configs" / "pretrain").glob("*.yaml"))
OVERRIDE = re.compile(r"^\+{0,2}[a-z_]+(\.[a-z_0-9]+)+=")
PLACEHOLDER = re.compile(r"\$\{?[A-Za-z_]+\}?|\.\.\.|<[^>]*>|\bCKPT\b")


def commands(path: Path):
    """(line number, words) of each training command in the fenced code blocks of a markdown file."""
    text, out = path.read_text(), []
    for block in re.finditer(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        first = text[: block.start()].count("\n") + 2
        joined = re.sub(r"\\\n\s*", " ", block.group(1))
        for offset, line in enumerate(joined.splitlines()):
            line = line.split(" #")[0].strip()
            if re.search(r"fairseq-hydra-train|fairseq_cli\.hydra_train|run_training\.sh", line) \
                    and not line.startswith("#"):
                out.append((f"{path.name}:{first + offset}", shlex.split(line)))
    return out


def config_and_overrides(words):
    """The recipe and the hydra overrides of one command (None for the demo form / --help / unknown)."""
    words = [PLACEHOLDER.sub("x", w) for w in words]
    if "--config-name" in words:
        return words[words.index("--config-name") + 1], [w for w in words if OVERRIDE.match(w)]
    if any(w.endswith("run_training.sh") for w in words):
        i = next(i for i, w in enumerate(words) if w.endswith("run_training.sh"))
        rest = words[i + 1:]
        if not rest or OVERRIDE.match(rest[0]):  # the demo form: overrides for MERT_demo_cpu
            return "MERT_demo_cpu", [w for w in rest if OVERRIDE.match(w)]
        if rest[0].startswith("-") or len(rest) < 3:
            return None, []
        return rest[2], [w for w in rest[3:] if OVERRIDE.match(w)]
    return None, []


def compose(config: str, overrides):
    """The config fairseq-hydra-train would run (hydra compose + fairseq's add_defaults), or an exception."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import mert_fairseq  # noqa: F401  (registers the task and model, as common.user_dir does)

    GlobalHydra.instance().clear()
    hydra_init(config)
    with initialize_config_dir(config_dir=str(ROOT / "configs" / "pretrain"), version_base="1.1"):
        cfg = hydra_compose(config_name=config, overrides=list(overrides))
    add_defaults(cfg)
    return cfg


ALL = [(where, *config_and_overrides(words)) for path in DOCS for where, words in commands(path)]
CASES = [c for c in ALL if c[1] is not None]


def test_docs_show_training_commands():
    assert len(CASES) >= 6, ALL
    assert {c[1] for c in CASES} >= {"MERT_RVQ-VAE_CQT_95M", "MERT_demo_cpu"}


@pytest.mark.parametrize("where,config,overrides", CASES, ids=[c[0] for c in CASES])
def test_documented_command_composes(where, config, overrides):
    assert config in RECIPES, f"{where}: no recipe {config}"
    cfg = compose(config, overrides)
    for o in overrides:  # the value the user asked for is the one in the config
        key, value = o.lstrip("+").split("=", 1)
        node = cfg
        for part in key.split("."):
            node = node[part]
        if value in ("x", "null") or value.startswith(("[", "'", "(")) or "x" in value.split("/"):
            continue
        try:
            assert float(node) == float(value), (where, o, node)
        except (TypeError, ValueError):
            assert str(node).lower() == value.strip("'\"").lower(), (where, o, node)


def prose_overrides():
    """Every `task.x=...` / `model.x=...` (or `+task.x=...`) word in the docs: prose, comments, commands."""
    found = set()
    for path in DOCS:
        for m in re.finditer(r"(?:^|[\s`'(])(\+{0,2}(?:task|model)\.[a-z_0-9]+)=", path.read_text(), re.M):
            found.add(m.group(1))
    return sorted(found)


NO_EFFECT = {"seed", "enable_padding", "store_labels", "cqt_loss_bin_dataloader", "inbatch_noise_augment_len_range",
             "inbatch_noise_augment_number_range", "inbatch_noise_augment_volume"}  # legacy / informational fields


def test_every_task_option_and_every_mentioned_key_is_in_every_recipe():
    import dataclasses

    from omegaconf import OmegaConf

    from mert_fairseq.tasks.mert_pretraining_config import MERTPretrainingConfig

    keys = prose_overrides()
    assert "task.numpy_memmap_label" in keys and "task.skip_bad_audio" in keys
    options = [f"task.{f.name}" for f in dataclasses.fields(MERTPretrainingConfig) if f.name not in NO_EFFECT]
    missing, plus = [], [k for k in keys if k.startswith("+")]
    for recipe in RECIPES:
        yaml = OmegaConf.load(ROOT / "configs" / "pretrain" / f"{recipe}.yaml")
        has = lambda key: key.split(".")[1] in yaml[key.split(".")[0]].keys()  # noqa: E731  (??? counts)
        missing += [f"{recipe}: {k}" for k in sorted(set(keys + options)) if not k.startswith("+") and not has(k)]
    assert not missing, "\n".join(missing)
    assert not plus, f"written with '+' (hydra refuses '+' for a key the YAML has): {plus}"
