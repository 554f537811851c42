"""``robotclient sim --sites 2``: real edge sites on loopback, one emulated link, handovers every few seconds."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

import robotclient.sim.robot as sim_robot
from robotclient.__main__ import main
from robotclient.runtime.drivers.base import edge_color, visible_color
from robotclient.runtime.records import read_csv


def test_sim_with_two_sites_hands_over_reports_it_and_changes_the_led_colour(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    robots: list[sim_robot.SimulatedRobot] = []

    class Recorded(sim_robot.SimulatedRobot):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            robots.append(self)

    monkeypatch.setattr(sim_robot, "SimulatedRobot", Recorded)  # cmd_sim imports it when it runs
    out = tmp_path / "sim"
    cell_s, outage_s = 3.0, 0.3
    code = main(["sim", "--duration", "10", "--sites", "2", "--cell-s", str(cell_s), "--link-delay-ms", "20",
                 "--link-jitter-ms", "5", "--link-mbps", "50", "--handover-outage-ms", str(outage_s * 1000),
                 "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out) == summary

    # Crossings at 3, 6 and 9 s: each breaks the link and the next fresh reply comes from the other site.
    assert isinstance(summary["handovers"], int) and summary["handovers"] >= 2, summary
    gaps = summary["handover_gaps_s"]
    assert isinstance(gaps, list) and len(gaps) == summary["handovers"]
    assert all(isinstance(g, float) and outage_s <= g <= outage_s + 1.5 for g in gaps), gaps
    assert summary["edges"] == ["127.0.0.2", "127.0.0.3"]
    assert isinstance(summary["stale_motion_s"], float) and summary["stale_motion_s"] == 0.0
    assert isinstance(summary["target_centred_fraction"], float)
    assert summary["time_to_first_acquisition_s"] is not None and isinstance(summary["reacquire_s"], list)
    # Each site reports its own identity; the operator's log and overlay name it.
    sites = {r["served_by"].split("/")[0] for r in read_csv(out / "frames.csv") if r["served_by"]}
    assert sites == {"edge-1", "edge-2"}

    # The simulated robot's LEDs follow the serving edge: a new colour at each handover, alternating.
    (robot,) = robots
    shown = [edge for _, edge in robot.edges]
    assert shown[:3] == ["127.0.0.2", "127.0.0.3", "127.0.0.2"], robot.edges
    assert all(a != b for a, b in itertools.pairwise(shown))
    assert len(shown) == summary["handovers"] + 1
    colours = [visible_color(edge_color(edge)) for edge in shown]
    assert colours[0] != colours[1]
    changes = [at for at, _ in robot.edges[1:]]  # one per crossing, each shortly after its outage
    assert all(abs((b - a) - cell_s) < 1.0 for a, b in itertools.pairwise(changes)), robot.edges
