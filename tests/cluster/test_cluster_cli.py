"""`sekisho cluster plan` and `sekisho cluster render`, through the real CLI entry point."""

import json
from pathlib import Path

import yaml

from sekisho.cli import main

REPO = Path(__file__).resolve().parents[2]
INVENTORY = str(REPO / "configs" / "cluster" / "reference.yaml")
FULL = str(REPO / "configs" / "cluster" / "gpu_requests" / "reference_full.yaml")


def test_plan_prints_a_table_per_node(capsys):
    assert main(["cluster", "plan", INVENTORY, FULL]) == 0
    out = capsys.readouterr().out
    for title in ("hgx-head (10.20.0.10, head): 4/4 GPUs used", "dgx-01 (10.20.0.11, worker): 8/8 GPUs used"):
        assert title in out
    assert "workers 0-7" in out and "workers 8-15" in out
    assert "36 of 36 GPUs assigned, 0 free." in out


def test_plan_json_gives_the_ray_objects(capsys):
    assert main(["cluster", "plan", INVENTORY, FULL, "--json"]) == 0
    objects = json.loads(capsys.readouterr().out)
    assert objects["llama-70b-lora"]["scaling_config"]["num_workers"] == 16
    assert len(objects["qwen2-5-72b"]["placement_groups"]) == 2


def test_an_infeasible_plan_is_one_paragraph_and_exit_2(tmp_path, capsys):
    requests = yaml.safe_load(Path(FULL).read_text())
    requests["requests"][2]["tensor_parallel"] = 2  # the 70B model at TP 2 overflows
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(requests))
    assert main(["cluster", "plan", INVENTORY, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sekisho: error: serve llama-3-3-70b: needs ") and err.count("\n") == 1
    assert "tensor_parallel=8 fits" in err and "Traceback" not in err


def test_a_config_mistake_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("requests:\n  - name: a\n    kind: serve\n    params_billion: 8\n")
    assert main(["cluster", "plan", INVENTORY, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: requests.0.params_billion: unknown key" in err


def test_render_writes_ray_up_and_kuberay(tmp_path, capsys):
    assert (
        main(
            [
                "cluster",
                "render",
                INVENTORY,
                "--ray-up",
                str(tmp_path / "up.yaml"),
                "--kuberay",
                str(tmp_path / "k8s"),
            ]
        )
        == 0
    )
    assert yaml.safe_load((tmp_path / "up.yaml").read_text())["cluster_name"] == "sekisho-ref"
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == [
        "README.txt",
        "raycluster.yaml",
        "rayservice.yaml",
    ]
    assert main(["cluster", "render", INVENTORY]) == 2
    assert "--ray-up FILE and/or --kuberay DIR" in capsys.readouterr().err
