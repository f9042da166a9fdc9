from __future__ import annotations

import pytest

from shapcluster.errors import InputError, RemoteError
from shapcluster.inventory import Host, build_inventory, check_cpus, parse_host_spec, parse_inventory


def test_parses_users_ports_cpus_comments_and_blank_lines() -> None:
    text = "# workers\n\nnode1\nalice@10.0.0.2:2222 cpus=4  # big one\n  bob@[fe80::1]:22\n"
    hosts = parse_inventory(text, "workers.txt")
    assert hosts == [
        Host("node1", None, 22, None, "workers.txt", 3),
        Host("10.0.0.2", "alice", 2222, 4, "workers.txt", 4),
        Host("fe80::1", "bob", 22, None, "workers.txt", 5),
    ]
    assert [h.name for h in hosts] == ["node1", "10.0.0.2:2222", "[fe80::1]"]
    assert hosts[1].location == "workers.txt:4"


def test_empty_file_means_no_workers() -> None:
    assert parse_inventory("", "w") == []
    assert parse_inventory("# only comments\n\n", "w") == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("node1:0", "port '0'"),
        ("node1:99999", "port '99999'"),
        ("node1:ssh", "port 'ssh'"),
        ("node1 cpus=0", "cpus: '0' is not a whole number"),
        ("node1 cpus=two", "cpus: 'two'"),
        ("node1 cpu=2", "unknown option 'cpu=2'"),
        ("node1 cpus=2 cpus=3", "cpus= is given twice"),
        ("node1 extra", "unknown option 'extra'"),
        ("bad_host!", "'bad_host!' is not a valid host name"),
        ("300.1.1.1", "'300.1.1.1' is not a valid host name"),
        ("r;oot@node1", "'r;oot' is not a valid user name"),
        ("@node1", "is not a host"),
        ("[zz::1]", "'zz::1' in '[zz::1]' is not an IPv6 address"),
    ],
)
def test_bad_lines_name_file_line_and_expectation(line: str, expected: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_inventory(f"ok-host\n{line}\n", "inv/workers.txt")
    assert caught.value.message.startswith("inv/workers.txt:2: ")
    assert expected in caught.value.message
    assert caught.value.hint is not None and "[user@]host[:port] [cpus=N]" in caught.value.hint


def test_every_bad_line_is_reported_at_once() -> None:
    with pytest.raises(InputError) as caught:
        parse_inventory("a:0\nb\nc cpus=x\n", "w.txt")
    lines = caught.value.message.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["w.txt:1", "w.txt:3"]


def test_duplicate_hosts_name_both_lines_even_with_other_port_or_case() -> None:
    with pytest.raises(InputError, match=r"w.txt:3: Node1 is already listed at w.txt:1"):
        parse_inventory("node1\nnode2\nNode1:2222\n", "w.txt")


def test_head_listed_as_worker_names_both_places() -> None:
    head = Host("10.0.0.1", source="shapcluster.toml", line=7)
    workers = parse_inventory("10.0.0.2\n10.0.0.1\n", "workers.txt")
    with pytest.raises(
        InputError, match=r"workers.txt:2: 10.0.0.1 is the head \(declared at shapcluster.toml:7\)"
    ):
        build_inventory(head, workers)


def test_inventory_lists_head_first() -> None:
    head = Host("h")
    workers = parse_inventory("w1\nw2\n", "w")
    inventory = build_inventory(head, workers)
    assert [h.address for h in inventory.hosts] == ["h", "w1", "w2"]


def test_parse_host_spec_defaults() -> None:
    assert parse_host_spec("host.example.org", where="x") == (None, "host.example.org", 22)
    assert parse_host_spec("u@h:2", where="x") == ("u", "h", 2)


def test_check_cpus_uses_configured_count_or_all() -> None:
    assert check_cpus(Host("h", cpus=2), "8\n") == 2
    assert check_cpus(Host("h"), " 8\n") == 8
    assert check_cpus(Host("h", cpus=8), "8") == 8


def test_check_cpus_refuses_more_than_the_host_has() -> None:
    host = Host("w1", cpus=16, source="workers.txt", line=3)
    with pytest.raises(
        InputError, match=r"workers.txt:3: w1 is configured with 16 CPUs but has only 4"
    ) as caught:
        check_cpus(host, "4\n")
    assert caught.value.hint == "Set cpus=4 or less for w1 there."


@pytest.mark.parametrize("output", ["", "nproc: not found", "0"])
def test_check_cpus_refuses_garbage_output(output: str) -> None:
    with pytest.raises(RemoteError, match="w1: `nproc` printed"):
        check_cpus(Host("w1"), output)
