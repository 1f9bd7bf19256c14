"""``lead-bot comps import`` and ``lead-bot cma`` (batch and flags), run through ``cli.main`` on the test
Redis."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import redis

from ghl_real_estate_ai import cli

from .test_import import RESO_CSV


@pytest.fixture
def env(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("LEAD_BOT_COMPS", raising=False)
    return tmp_path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _comps_keys(redis_url: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match="lead-bot:{comps}:*"))
    finally:
        client.close()


def test_import_then_reimport_then_batch_from_the_store(
    env: Path, redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    export = env / "export.csv"
    export.write_text("\ufeff" + RESO_CSV, encoding="utf-8")
    assert cli.main(["comps", "import", str(export)]) == 0
    out = capsys.readouterr().out
    assert "loaded 4 closed sales" in out and "(4 new, 0 changed)" in out and "1 (not a closed sale)" in out
    keys = sorted(_comps_keys(redis_url))
    assert cli.main(["comps", "import", str(export)]) == 0
    assert "(0 new, 0 changed)" in capsys.readouterr().out
    assert sorted(_comps_keys(redis_url)) == keys

    batch = env / "in.csv"
    batch.write_text(
        "id,Latitude,Longitude,LivingArea,BedroomsTotal,BathroomsTotalInteger,YearBuilt,PropertySubType,"
        "AsOfDate\n"
        "near,39.7405,-104.9900,1850,3,2,1995,Single Family Residence,2026-11-01\n"
        "before-the-sales,39.7405,-104.9900,1850,3,2,1995,SingleFamilyResidence,2026-07-15\n"
        "by-zip,,,1850,3,2,1995,Single Family Residence,2026-11-01\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("LEAD_BOT_COMPS", "store")
    (env / "by-zip.csv").write_text(
        "id,PostalCode,LivingArea,PropertySubType,AsOfDate\n"
        "z,80203,1850,Single Family Residence,2026-11-01\n",
        encoding="utf-8",
    )
    out_path = env / "out.csv"
    assert cli.main(["cma", "--batch", str(batch), "--out", str(out_path)]) == 0
    assert "estimated 1 of 3 properties" in capsys.readouterr().out
    rows = list(csv.DictReader(out_path.open(encoding="utf-8")))
    assert [r["id"] for r in rows] == ["near", "before-the-sales", "by-zip"]
    assert list(rows[0]) == ["id", "estimate", "low", "high", "comps", "confidence"]
    near = rows[0]
    assert near["comps"] == "3" and int(near["low"]) <= int(near["estimate"]) <= int(near["high"])
    assert 560_000 <= int(near["estimate"]) <= 680_000
    assert rows[1]["estimate"] == "" and rows[1]["confidence"] == "none"  # only one sale closed before
    assert rows[2]["estimate"] == ""  # no coordinates and no zip in that file: nowhere to look
    assert cli.main(["cma", "--batch", str(env / "by-zip.csv")]) == 0
    by_zip = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert by_zip[0]["comps"] == "3" and by_zip[0]["estimate"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("CloseDate,LivingArea,PostalCode,PropertySubType\n2026-01-01,1500,80203,Condominium\n",
         "no ClosePrice column"),
        ("ClosePrice,CloseDate,LivingArea,PostalCode,PropertySubType\n500000,2026-01-01,1500,80203,Condo\n"
         "$5x,2026-01-01,1500,80203,Condo\n", "line 3, column 'ClosePrice'"),
    ],
)
def test_a_file_that_cannot_be_mapped_loads_nothing(
    env: Path, redis_url: str, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    bad = env / "bad.csv"
    bad.write_text(text, encoding="utf-8")
    assert cli.main(["comps", "import", str(bad)]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("lead-bot comps import: ") and problem in line
    assert _comps_keys(redis_url) == []


def test_cma_for_one_property_by_flags_on_the_demo_data(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["cma", "--latitude", "30.243", "--longitude", "-97.765", "--sqft", "1800",
                     "--beds", "3", "--as-of", "2026-11-01"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("estimate $") and "comps, confidence" in out and "Austin" in out
    assert cli.main(["cma", "--zip", "80218", "--city", "Denver", "--as-of", "2026-11-01"]) == 1
    assert "no estimate" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["cma", "--latitude", "30.2"], "give both --latitude and --longitude"),
        (["cma", "--sqft", "1800"], "say where the property is"),
        (["cma", "--zip", "78704", "--type", "Duplex"], "not a property subtype the CMA values"),
        (["cma", "--zip", "78704", "--as-of", "someday"], "--as-of: unreadable date"),
        (["cma", "--batch", "missing.csv"], "No such file or directory"),
        (["comps", "import", "missing.csv"], "No such file or directory"),
    ],
)
def test_bad_input_is_one_line(env: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                               problem: str) -> None:
    assert cli.main(args) == 2
    assert problem in _one_line_error(capsys)


def test_a_batch_file_without_as_of_dates_is_refused(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = env / "in.csv"
    batch.write_text("id,Latitude,Longitude\nA,30.2,-97.7\n", encoding="utf-8")
    assert cli.main(["cma", "--batch", str(batch)]) == 2
    assert "no AsOfDate column" in _one_line_error(capsys)
