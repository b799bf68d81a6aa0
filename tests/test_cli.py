"""One command-line convention: every script is a thin wrapper over a module's main(argv), whose
build_parser() has kebab-case flags with help text; the original MERT's snake_case spellings are
aliases only; one spelling for an output folder, an output file, a scratch folder, a label folder and
splits; every command README and docs show parses."""
from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))

KEBAB = re.compile(r"--[A-Za-z0-9]+(-[a-z0-9]+)*")  # --C (probe's sklearn C) is the only capital
# The original MERT code's spellings, accepted as aliases (never as the primary spelling).
ORIGINAL_SNAKE = {"--manifest_path", "--manifest_file_name", "--out_root", "--codebook_size", "--n_codebook",
                  "--checkpoint_path", "--pytorch_dump_folder", "--pytorch_dump_folder_path"}
# concept -> (the one primary spelling, other spellings that may only be its aliases)
CONVENTION = {
    "output folder": ("--out-dir", {"--output-dir", "--outdir", "--out_dir", "--output_dir", "--pytorch-dump-folder",
                                    "--pytorch_dump_folder", "--pytorch_dump_folder_path"}),
    "output file": ("--out", {"--output", "--out-file", "--output-file", "--out_file"}),
    "scratch folder": ("--work-dir", {"--workdir", "--dir", "--work_dir"}),
    "label folder": ("--label-dir", {"--out-root", "--out_root", "--label_dir", "--labels-dir"}),
}
SPLIT_PRIMARIES = {"--splits", "--split", "--split-column", "--split-steps"}  # --split: k-means fits one split
SPLIT_COMPAT = "--manifest-file-name"  # the original's form of --splits (train.tsv,valid.tsv), exclusive with it


def wrapped_module(script: Path) -> str:
    """The module whose main a scripts/*.py wrapper imports; the wrapper itself holds no logic."""
    tree = ast.parse(script.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("mert_fairseq")]
    assert len(imports) == 1 and [a.name for a in imports[0].names] == ["main"], script.name
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], \
        f"{script.name} defines functions: move them into {imports[0].module}"
    assert "argparse" not in script.read_text(), f"{script.name}: the parser belongs in {imports[0].module}"
    return imports[0].module


def cli_modules() -> dict[str, str]:
    """name -> module: every scripts/*.py wrapper, and the modules scripts/*.sh run with python -m."""
    found = {s.stem: wrapped_module(s) for s in SCRIPTS}
    for sh in sorted((ROOT / "scripts").glob("*.sh")):
        for module in re.findall(r"-m (mert_fairseq(?:\.\w+)+)", sh.read_text()):
            found[f"{sh.name}:{module}"] = module
    return found


MODULES = cli_modules()


def parser_of(module: str) -> argparse.ArgumentParser:
    parser = importlib.import_module(module).build_parser()
    assert isinstance(parser, argparse.ArgumentParser), module
    return parser


def walk(parser: argparse.ArgumentParser, where: str):
    """(where, action) for every argument of the parser and of its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{where} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield where, action


def all_actions():
    return [(w, a) for name, module in MODULES.items() for w, a in walk(parser_of(module), name)]


def primary(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def test_every_script_is_a_thin_wrapper_with_a_parser():
    assert len(SCRIPTS) >= 16 and "gpu_check.sh:mert_fairseq.perf.gpu_check" in MODULES
    assert MODULES["extract_features"] == "mert_fairseq.evaluation.features"
    for name, module in MODULES.items():
        assert callable(importlib.import_module(module).main), name
        assert len(list(walk(parser_of(module), name))) >= 1, name


def test_every_argument_has_help():
    missing = [f"{w}: {a.option_strings or a.dest}" for w, a in all_actions()
               if not a.help or a.help == argparse.SUPPRESS or not a.help.strip()]
    assert missing == []


def test_primary_spellings_are_kebab_case_and_snake_case_only_original_aliases():
    actions = [(w, a) for w, a in all_actions() if a.option_strings]
    assert len(actions) > 150  # the walk really reached every parser and subcommand
    bad_primary = [f"{w}: {primary(a)}" for w, a in actions if not KEBAB.fullmatch(primary(a))]
    assert bad_primary == []
    stray_snake = [f"{w}: {s}" for w, a in actions for s in a.option_strings if "_" in s and s not in ORIGINAL_SNAKE]
    assert stray_snake == []
    for alias in ORIGINAL_SNAKE:  # each original spelling is still accepted somewhere
        assert any(alias in a.option_strings for _, a in actions), alias


@pytest.mark.parametrize("concept", sorted(CONVENTION))
def test_one_spelling_per_concept(concept):
    main, aliases = CONVENTION[concept]
    wrong = [f"{w}: {a.option_strings}" for w, a in all_actions() if a.option_strings
             and set(a.option_strings) & aliases and primary(a) != main]
    assert wrong == []
    assert any(a.option_strings and primary(a) == main for _, a in all_actions())


def test_outputs_and_splits_use_the_chosen_primaries():
    primaries = [(w, primary(a)) for w, a in all_actions() if a.option_strings]
    outputs = [f"{w}: {p}" for w, p in primaries if p.startswith(("--out", "--output")) and p not in ("--out-dir", "--out")]
    assert outputs == []
    splits = [f"{w}: {p}" for w, p in primaries if "split" in p and p not in SPLIT_PRIMARIES]
    assert splits == []
    scripts_with_splits = {w for w, p in primaries if p == "--splits"}
    compat = [(w, a) for w, a in all_actions() if a.option_strings and primary(a) == SPLIT_COMPAT]
    assert [w for w, _ in compat] == ["prepare_codecs_from_manifest"]
    assert [primary(b) for b in parser_of(MODULES[compat[0][0]])._mutually_exclusive_groups[0]._group_actions] \
        == ["--splits", SPLIT_COMPAT]
    assert {"prepare_codecs_from_manifest", "merge_label_parts", "validate_data",
            "prepare_kmeans_labels apply", "prepare_kmeans_labels all"} <= scripts_with_splits


def parsed(module: str, argv: list[str]) -> dict:
    return vars(parser_of(module).parse_args(argv))


def test_original_spellings_parse_like_the_new_ones():
    from mert_fairseq.prep.encodec_labels import _manifest_names

    codecs = "mert_fairseq.prep.encodec_labels"
    old = parsed(codecs, ["--manifest_path", "M", "--manifest_file_name", "train.tsv,valid.tsv", "--out_root", "L",
                          "--codebook_size", "1024", "--n_codebook", "4"])
    new = parsed(codecs, ["--manifest-dir", "M", "--splits", "train,valid", "--label-dir", "L",
                          "--codebook-size", "1024", "--n-codebook", "4"])
    assert _manifest_names(argparse.Namespace(**old)) == _manifest_names(argparse.Namespace(**new)) \
        == ["train.tsv", "valid.tsv"]
    assert _manifest_names(argparse.Namespace(**parsed(codecs, ["--manifest-dir", "M", "--label-dir", "L"]))) \
        == ["train.tsv"]
    drop = ("splits", "manifest_file_name")
    assert {k: v for k, v in old.items() if k not in drop} == {k: v for k, v in new.items() if k not in drop}
    assert (old["manifest_dir"], old["label_dir"], old["n_codebook"]) == ("M", "L", 4)

    convert = "mert_fairseq.export.convert"
    forms = [["--checkpoint_path", "C", "--pytorch_dump_folder", "O"], ["--checkpoint-path", "C", "--out-dir", "O"],
             ["--checkpoint", "C", "--pytorch_dump_folder_path", "O"]]
    assert [parsed(convert, f) for f in forms] == [parsed(convert, forms[0])] * 3
    assert parsed(convert, forms[0])["out_dir"] == "O"

    features = "mert_fairseq.evaluation.features"
    assert parsed(features, ["a.wav", "--output-dir", "F", "--checkpoint", "C"]) \
        == parsed(features, ["a.wav", "--out-dir", "F", "--checkpoint", "C"])
    assert parsed("mert_fairseq.perf.data_loading", ["--workdir", "W"])["work_dir"] == "W"
    assert parsed("mert_fairseq.perf.manifest_prep", ["--dir", "W"])["work_dir"] == "W"


def test_splits_and_the_original_manifest_file_name_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser_of("mert_fairseq.prep.encodec_labels").parse_args(
            ["--manifest-dir", "M", "--label-dir", "L", "--splits", "train", "--manifest_file_name", "valid.tsv"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(MODULES))
def test_help_exits_zero_in_process(name, capsys):
    module = importlib.import_module(MODULES[name])
    sub = [a for a in module.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = [[]] + [[c] for a in sub for c in a.choices]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            module.main(command + ["--help"])
        assert exit_info.value.code == 0, (name, command)
        out = capsys.readouterr().out
        assert out.startswith("usage:"), (name, command)


def test_help_exits_zero_as_scripts():
    """Two entry points in fresh interpreters, in parallel (each costs ~10 s of imports on a busy 2-core
    machine): a scripts/*.py wrapper's path setup, and the `python -m` form scripts/gpu_check.sh uses."""
    commands = {"extract_features": [sys.executable, "scripts/extract_features.py", "--help"],
                "gpu_check": [sys.executable, "-m", "mert_fairseq.perf.gpu_check", "--help"]}
    expected = {"extract_features": "--out-dir", "gpu_check": "--out-dir"}
    procs = {k: subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-2000:])
        assert out.startswith("usage:") and expected[name] in out, name


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, script, argv) of every `python scripts/X.py ...` command in README.md and docs/*.md code blocks."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
        inline = [c.replace("\n", " ") for c in re.findall(r"`(python scripts/[^`]+)`", text)]
        lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()] + inline
        for line in lines:
            line = line.split("#", 1)[0].strip()
            match = re.match(r"python (scripts/(\w+)\.py)(.*)", line)
            if not match or "..." in line or "|" in line or "[" in line:
                continue  # placeholders (alternatives, optional parts) are not a command line
            found.append((doc.name, match.group(2), shlex.split(match.group(3))))
    return found


def test_documented_commands_parse():
    commands = documented_commands()
    assert {"prepare_codecs_from_manifest", "convert_to_hf", "prepare_manifest", "benchmark"} <= \
        {script for _, script, _ in commands}
    for doc, script, argv in commands:
        parser = parser_of(MODULES[script])
        parser.exit_on_error = False
        try:
            parser.parse_args(argv)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f"{doc}: python scripts/{script}.py {shlex.join(argv)}: {exc}")
