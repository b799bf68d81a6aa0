"""What the README and docs/ say runs, composes: every `fairseq-hydra-train` / `run_training.sh` command
shown there (fenced code, continuation lines joined) is composed with its overrides against the YAML it
names, as fairseq-hydra-train does (fairseq's structured config, then the task/model dataclasses), without
training. The recipes say what they mean: every key a shipped YAML sets is a field of its config class, a
task/model key sits away from its default unless the docs name it, and every `task.*=` / `model.*=` /
`criterion.*=` override the docs name is a key of every shipped YAML, so it is set as written (no `+`; other
options are added with `+task.NAME=VALUE`)."""
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
    """Every `task.x=...` / `model.x=...` / `criterion.x=...` (or `+task.x=...`) word in the docs: prose,
    comments, commands."""
    found = set()
    for path in DOCS:
        for m in re.finditer(r"(?:^|[\s`'(])(\+{0,2}(?:task|model|criterion)\.[a-z_0-9]+)=", path.read_text(), re.M):
            found.add(m.group(1))
    return sorted(found)


def recipe_yaml(recipe: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "configs" / "pretrain" / f"{recipe}.yaml").read_text())


def group_fields(group: str, node: dict) -> dict:
    """name -> default (MISSING for required fields) of the config class of one YAML group, as fairseq resolves it."""
    import dataclasses

    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    import mert_fairseq  # noqa: F401  (registers the task and model)

    if group == "task":
        dc = TASK_DATACLASS_REGISTRY[node["_name"]]
    elif group == "model":
        dc = MODEL_DATACLASS_REGISTRY[node["_name"]]
    elif group in REGISTRIES:
        dc = REGISTRIES[group]["dataclass_registry"][node["_name"]]
    else:
        default = FairseqConfig.__dataclass_fields__[group].default
        dc = default if dataclasses.is_dataclass(default) else FairseqConfig.__dataclass_fields__[group].default_factory
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(dc)}


def same_value(yaml_value, default) -> bool:
    """A YAML value equals a dataclass default (numbers as floats, lists and tuples as lists)."""
    if isinstance(default, (list, tuple)) or isinstance(yaml_value, (list, tuple)):
        return isinstance(yaml_value, (list, tuple)) and isinstance(default, (list, tuple)) \
            and list(yaml_value) == list(default)
    if isinstance(yaml_value, bool) or isinstance(default, bool) or yaml_value is None or default is None:
        return yaml_value is default or yaml_value == default and type(yaml_value) is type(default)
    if isinstance(yaml_value, (int, float)) and isinstance(default, (int, float)):
        return float(yaml_value) == float(default)
    return str(yaml_value) == str(default)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_key_a_recipe_sets_is_a_field_of_its_config(recipe):
    yaml = recipe_yaml(recipe)
    unknown = [f"{group}.{key}" for group, node in yaml.items() if group != "hydra"
               for key in node if key not in group_fields(group, node)]
    assert not unknown, f"{recipe}: not a config field: {unknown}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_sets_task_and_model_fields_at_their_default_only_where_the_docs_name_them(recipe):
    """A shipped YAML sets what the recipe decides (values away from the defaults) and the keys the docs tell
    users to set; nothing else."""
    import dataclasses

    documented = {k.lstrip("+") for k in prose_overrides()}
    yaml, idle = recipe_yaml(recipe), []
    for group in ("task", "model"):
        fields = group_fields(group, yaml[group])
        for key, value in yaml[group].items():
            default = fields.get(key)
            if key == "_name" or value == "???" or default is dataclasses.MISSING:
                continue
            if same_value(value, default) and f"{group}.{key}" not in documented:
                idle.append(f"{group}.{key}={value!r}")
    assert not idle, f"{recipe} sets fields at their default that no doc names (drop them): {idle}"


def test_every_documented_key_is_in_every_recipe():
    keys = prose_overrides()
    assert "task.numpy_memmap_label" in keys and "task.skip_bad_audio" in keys
    missing, plus, unknown = [], [], []
    for recipe in RECIPES:
        yaml = recipe_yaml(recipe)
        for key in keys:
            group, name = key.lstrip("+").split(".")
            if name not in group_fields(group, yaml[group]):
                unknown.append(f"{recipe}: {key}")
            elif not key.startswith("+") and name not in yaml[group]:  # '???' counts
                missing.append(f"{recipe}: {key}")
            elif key.startswith("+") and not key.startswith("++") and name in yaml[group]:
                plus.append(f"{recipe}: {key}")
    assert not unknown, "documented, but not a config field:\n" + "\n".join(unknown)
    from mert_fairseq.models.mert_config import NO_EFFECT_FIELDS as MODEL_ACCEPTED
    from mert_fairseq.tasks.mert_pretraining_config import NO_EFFECT_FIELDS as TASK_ACCEPTED

    accepted = {**{f"task.{k}": v for k, v in TASK_ACCEPTED.items()}, **{f"model.{k}": v for k, v in MODEL_ACCEPTED.items()}}
    told = [f"{k}: {accepted[k.lstrip('+')].why}" for k in keys if k.lstrip("+") in accepted]
    assert not told, "the docs tell users to set a field that has no effect:\n" + "\n".join(told)
    assert not missing, "documented without '+', so every recipe must set it:\n" + "\n".join(missing)
    assert not plus, "written with '+' (hydra refuses '+' for a key the YAML has):\n" + "\n".join(plus)
