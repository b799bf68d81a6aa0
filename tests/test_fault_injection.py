"""The fault-injection harness, short: 3 SIGKILLs of the training process group (half-way through a
checkpoint write, half-way through a checkpoint copy, at a random time after the first update), each
followed by the same command; the final weights, optimizer state and iterator position must be
bit-identical to an uninterrupted run. The full run: python scripts/fault_injection.py --kills 20."""
from mert_fairseq.testing.fault_injection import main


def test_three_kills_resume_to_a_bit_identical_run(tone_data, tmp_path, capsys):
    code = main(["--kinds", "checkpoint_write,checkpoint_copy,time", "--max-update", "12", "--save-every", "3",
                 "--validate-every", "6", "--seed", "1", "--work-dir", str(tmp_path), "--data", tone_data["data"],
                 "--labels", ",".join(tone_data["labels"]), "--markdown", str(tmp_path / "report.md")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "kills: 3 of 3 planned" in out and "resumes that succeeded: 3/3" in out, out
    assert "max |weight diff|: 0\n" in out and "max |optimizer state diff|: 0\n" in out, out
    assert "iterator position identical: True" in out and "final update: 12 (uninterrupted run: 12)" in out, out
    table = (tmp_path / "report.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ") and "hit" in line]
    rows = {cells[2].split(" ")[0]: cells for cells in ([c.strip() for c in line.split("|")] for line in lines)}
    # the write and copy kills really left a half-written temporary file (and no damaged checkpoint)
    assert rows["checkpoint_write"][4] == "1" and rows["checkpoint_copy"][4] == "1", table
    assert all(cells[7] == "no" for cells in rows.values()), table
