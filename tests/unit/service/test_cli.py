"""The seqserve command line without a server: help texts, argument handling, CSV input, errors."""

from __future__ import annotations

import io
from datetime import datetime
import subprocess
import sys

import pytest

from service.client import cli
from service.client.commands import significant_digits
from service.client.csvhistory import read_csv_history
from tests.integration.harness import free_port

SUBCOMMANDS = ["serve", "translate", "forecast", "generate", "models", "health"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"seqserve {command}" in text
    description = text.split("\n\n")[1]  # usage, blank line, description
    assert len(description.split()) >= 5, description


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for command in [*SUBCOMMANDS, *cli.TRAINING_COMMANDS]:
        assert command in text


def test_serve_help_lists_config_flags_with_env_names(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = capsys.readouterr().out
    for flag, env in [("--port", "SEQSERVE_PORT"), ("--models", "SEQSERVE_MODELS"), ("--max-streams", "SEQSERVE_MAX_STREAMS")]:
        assert flag in text and env in text


def test_client_commands_need_their_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["forecast", "--horizon", "3"])  # --csv missing
    assert exit_info.value.code == 2
    assert "--csv" in capsys.readouterr().err


def test_bad_quantiles_are_rejected_by_name(capsys):
    with pytest.raises(SystemExit):
        cli.main(["forecast", "--csv", "x.csv", "--horizon", "3", "--quantiles", "0.1,abc"])
    assert "--quantiles" in capsys.readouterr().err


def test_address_defaults_to_environment():
    parser = cli.build_parser({"SEQSERVE_ADDRESS": "10.0.0.1:7000"})
    assert parser.parse_args(["models"]).address == "10.0.0.1:7000"
    assert cli.build_parser({}).parse_args(["models"]).address == cli.DEFAULT_ADDRESS
    assert parser.parse_args(["models", "--address", "h:1"]).address == "h:1"


def test_unreachable_server_prints_code_and_exits_nonzero(capsys):
    address = f"127.0.0.1:{free_port()}"
    rc = cli.main(["models", "--address", address, "--timeout", "2"])
    assert rc == cli.EXIT_RPC_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ") or err.startswith("error: DEADLINE_EXCEEDED: "), err


def _csv(tmp_path, text: str | bytes, name: str = "series.csv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def test_csv_with_one_numeric_column(tmp_path):
    h = read_csv_history(_csv(tmp_path, "time,load\n2024-01-01,1.5\n2024-01-02,2\n2024-01-03,-3e2\n"))
    assert (h.names, h.rows, h.time_column) == (["load"], [[1.5], [2.0], [-300.0]], "time")
    assert [t.isoformat() for t in h.next_times(2)] == ["2024-01-04T00:00:00", "2024-01-05T00:00:00"]


def test_csv_columns_chosen_by_name_in_given_order(tmp_path):
    path = _csv(tmp_path, "a,b,c\n1,2,3\n4,5,6\n")
    h = read_csv_history(path, ["c", "a"])
    assert (h.names, h.rows) == (["c", "a"], [[3.0, 1.0], [6.0, 4.0]])
    assert read_csv_history(path).names == ["a", "b", "c"]  # the model's channels unknown: all of them
    assert read_csv_history(path, channels=1).names == ["c"]  # a univariate model: the last one, as ETT's OT


def test_csv_errors_name_file_line_and_column(tmp_path):
    path = _csv(tmp_path, "a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"series.csv: line 3, column 'b': 'oops' is not a number"):
        read_csv_history(path, ["a", "b"])
    with pytest.raises(ValueError, match=r"no column 'z'"):
        read_csv_history(path, ["z"])
    for missing in ("", "NaN", "n/a"):
        with pytest.raises(ValueError, match=rf"line 3, column 'v': missing value \('{missing}'\)"):
            read_csv_history(_csv(tmp_path, f"t,v\n2024-01-01,1\n2024-01-02,{missing}\n2024-01-03,3\n"))


def test_csv_from_stdin():
    h = read_csv_history("-", ["v"], io.StringIO("v\n1\n2\n"))
    assert (h.names, h.rows) == (["v"], [[1.0], [2.0]])


def test_csv_files_as_people_have_them(tmp_path):
    """Semicolons with decimal commas, Excel's BOM, Latin-1, no header, an index column before the
    date, thousands separators: each reads as the series it holds."""
    semicolon = read_csv_history(_csv(tmp_path, "datum;last\n2024-01-01 00:00;1,5\n2024-01-01 01:00;2,25\n"))
    assert (semicolon.names, semicolon.rows) == (["last"], [[1.5], [2.25]])
    assert semicolon.next_times(1)[0].isoformat(sep=" ") == "2024-01-01 02:00:00"
    bom = read_csv_history(_csv(tmp_path, "\ufeffdate,value\n2024-01-01,1\n2024-01-02,2\n"))
    assert (bom.time_column, bom.names) == ("date", ["value"])
    latin1 = read_csv_history(_csv(tmp_path, "Zeit,Verbrauch m\xb3\n2024-01-01,3\n2024-01-02,4\n".encode("latin-1")))
    assert latin1.names == ["Verbrauch m\u00b3"]
    headerless = read_csv_history(_csv(tmp_path, "2024-01-01,5\n2024-01-02,6\n2024-01-03,7\n"))
    assert (headerless.names, headerless.rows) == (["column 2"], [[5.0], [6.0], [7.0]])  # the first row is data
    indexed = read_csv_history(_csv(tmp_path, ",date,sales\n0,2024-01-01,\"30,000\"\n1,2024-01-02,\"31,500\"\n"
                                             "2,2024-01-03,\"29,750\"\n"))
    assert (indexed.names, indexed.rows) == (["sales"], [[30000.0], [31500.0], [29750.0]])
    assert any("using 'sales'" in n for n in indexed.notes)
    compact = read_csv_history(_csv(tmp_path, "date,co2\n20011215,371.2\n20011222,371.3\n20011229,371.5\n"))
    assert compact.names == ["co2"] and compact.next_times(1) == [datetime(2002, 1, 5)]  # YYYYMMDD, weekly


def test_forecast_digits_show_the_movement_at_any_offset():
    assert significant_digits([10.6046, 9.53025, 11.885]) == 6  # the README's example keeps its look
    around = [1e9 + 5.02, 1e9 + 4.62, 1e9 + 3.68, 1e9 + 2.94]
    digits = significant_digits(around)
    printed = [float(f"{v:.{digits}g}") for v in around]
    assert len(set(printed)) == 4 and max(abs(p - v) for p, v in zip(printed, around)) < 0.01 * (5.02 - 2.94)
    assert significant_digits([1e12 + 1, 1e12 + 2]) <= 17 and significant_digits([3.0, 3.0]) == 6
    assert significant_digits([float("nan"), 1.0]) == 6


def test_forecast_with_unreadable_csv_is_a_usage_error(tmp_path, capsys):
    rc = cli.main(["forecast", "--csv", str(tmp_path / "missing.csv"), "--horizon", "2"])
    assert rc == cli.EXIT_USAGE
    assert capsys.readouterr().err.startswith("error: ")


def test_serve_rejects_a_bad_environment_value(capsys):
    rc = cli.main(["serve"], environ={"SEQSERVE_PORT": "not-a-port"})
    assert rc == cli.EXIT_USAGE
    assert "SEQSERVE_PORT" in capsys.readouterr().err


def test_training_commands_without_torch_say_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # makes `import torch` fail like a serving install
        "from service.client.cli import main\n"
        f"sys.exit(main(['train', 'forecast', '--out', {str(tmp_path / 'run')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    assert proc.stderr.strip() == (
        "error: `seqserve train` needs the training extras (torch is missing): pip install 'seqserve[train]'"
    )


@pytest.mark.parametrize("command", ["train", "export", "evaluate"])
def test_training_commands_delegate_to_the_training_cli(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"seqserve-train {command}" in text  # training.cli's own parser answered


def test_an_address_without_a_port_means_seqserve_s_port():
    from service.client.options import with_default_port

    assert with_default_port("127.0.0.1") == "127.0.0.1:50051"  # gRPC alone would try 443
    assert with_default_port("[::1]") == "[::1]:50051" and with_default_port("[::1]:7") == "[::1]:7"
    assert with_default_port("localhost:7") == "localhost:7"
    assert with_default_port("dns:///seqserve.ns.svc.cluster.local:50051").startswith("dns:///")
    from service.client import SeqserveClient

    with SeqserveClient("example.invalid") as client:  # nothing is sent: channels connect lazily
        assert client.address == "example.invalid:50051"


def test_every_serve_flag_is_described_and_in_the_readme(capsys, monkeypatch):
    """`seqserve serve --help` describes each flag (not only its default) and the README's
    Configuration table names each one with the same default."""
    import re
    from dataclasses import fields
    from pathlib import Path

    from service.client import cli
    from service.core.config import ServeConfig

    monkeypatch.setattr("os.environ", {})
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    options = capsys.readouterr().out.split("options:", 1)[1]
    described = dict(re.findall(r"^  (--[a-z-]+)(?: [A-Z_{},a-z]+)?\s+(.*)$", options, re.M))
    assert len(described) > 30 and "--max-source-tokens" in described and "--help" not in described
    readme = Path(__file__).resolve().parents[3] / "README.md"
    table = readme.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for flag, text in described.items():
        assert len(text.split("(default", 1)[0].strip()) >= 10, f"{flag} has no description: {text!r}"
        assert f"`{flag}`" in table, f"{flag} is missing from the README's Configuration table"
    defaults = ServeConfig()
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        row = next((line for line in table.splitlines() if line.startswith("| `") and f"`{flag}`" in line), None)
        if row is None or f.name == "models":
            continue
        names = re.findall(r"`(--[a-z-]+)`", row.split("|")[1])
        shown = [v.strip().strip("`").split(" ")[0] for v in row.split("|")[2].split(",")]
        if len(shown) == len(names):
            default = getattr(defaults, f.name)
            want = {str(default), f"{default:g}" if isinstance(default, float) else str(default)} | (
                {"unset"} if default == "" else set())
            assert shown[names.index(flag)] in want, (flag, shown[names.index(flag)], default)
