import json

import pytest

from .helpers import assert_one_line_error, call_main, run_cli


@pytest.mark.parametrize("args,needle", [
    (["--model", "resnet99"], "unknown model 'resnet99'"),
    (["--data", "imagenet21k"], "unknown dataset 'imagenet21k'"),
    (["--budget", "flops:1.5"], "outside (0, 1)"),
    (["--budget", "flops:0"], "outside (0, 1)"),
    (["--budget", "watts:0.5"], "unknown budget kind"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "data folder not found: /nonexistent/cifar"),
    (["--epochs", "3", "--epi-window", "3"], "EPI window 3 is too large for 3 epochs"),
    (["--epochs", "4", "--epi-window", "3"], "EPI window 3 is too large for 4 epochs"),
    (["--epochs", "3", "--prune-at", "5"], "prune-at epoch 5 is outside"),
    (["--lr", "-1"], "learning rate -1.0"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
    assert_one_line_error(call_main(["train", "--out", tmp_path / "o", *args], capsys), needle)


def test_budget_that_cannot_be_met_exits_2(tmp_path, capsys):
    assert_one_line_error(call_main(["train", "--budget", "flops:0.0001", "--out", tmp_path / "o"], capsys),
                          "cannot be met")


def test_image_folder_without_images_exits_2(tmp_path, capsys):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "readme.txt").write_text("no images here")
    result = call_main(["train", "--data", "imagefolder", "--data-dir", tmp_path / "data", "--out", tmp_path / "o"],
                       capsys)
    assert_one_line_error(result, starts="no images in")


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_one_line_error(call_main(["train", "--out", blocker / "run"], capsys), starts="output folder")


def test_unknown_importance_is_an_argparse_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's own exit, not main's return
        call_main(["train", "--importance", "psychic"], capsys)
    assert exc.value.code == 2
    capsys.readouterr()
    assert_one_line_error(call_main(["train", "--importance", "psychic"], capsys, argparse_exit=True),
                          "invalid choice")


def test_end_to_end_run_prunes_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--train-subset", "256", "--val-subset", "128", "--epochs", "4", "--epi-window", "1",
                   "--min-dense-epochs", "2", "--max-dense-epochs", "2", "--batch-size", "64", "--budget", "flops:0.5",
                   "--out", out, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "pruned after epoch 2" in proc.stdout and "outputs in" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["epi"] is None and rows[1]["epi"] is not None
    assert [r["pruned"] for r in rows] == [False, True, True, True]
    for key in ("train_loss", "val_top1", "widths", "flops", "params", "epoch_seconds", "train_flops_cumulative"):
        assert key in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prune_epoch"] == 2 and summary["trigger"] in ("epi", "fallback")
    assert 0.49 <= summary["final_flops"] / summary["dense_flops"] <= 0.51
    assert summary["final_params"] < summary["dense_params"]
    assert summary["train_flops_total"] < summary["train_flops_dense_equivalent"]
    for name in ("model.safetensors", "architecture.json", "epi.png"):
        assert (out / name).stat().st_size > 0
    import epiprune

    model = epiprune.load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
