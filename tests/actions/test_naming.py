"""Object names, label values, hashing and the output-URI shard."""

from __future__ import annotations

import re

import pytest
from flyteidl2.common.identifier_pb2 import ActionIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st

from actions import naming

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def ident(org: str, project: str, domain: str, run: str, action: str) -> ActionIdentifier:
    return ActionIdentifier(
        run={"org": org, "project": project, "domain": domain, "name": run}, name=action
    )


# Fixed values: a change to the shard function would move every existing action's outputs.
@pytest.mark.parametrize(
    ("key", "shard"),
    [("flyte/r1-a0", "xt"), ("flyte/rabc-n1", "u8"), ("development/myrun-a3", "1z")],
)
def test_output_shard_known_vectors(key: str, shard: str) -> None:
    namespace, name = key.split("/")
    assert naming.output_shard(namespace, name) == shard


def test_fnv1a_32_known_values() -> None:
    assert naming.fnv1a_32(b"") == 0x811C9DC5
    assert naming.fnv1a_32(b"a") == 0xE40C292C
    assert naming.fnv1a_32(b"foobar") == 0xBF9CF968


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("s3://bucket/org/p/d/run", "s3://bucket/xt/org/p/d/run/a0/1"),
        ("s3://bucket/org/p/d/run/", "s3://bucket/xt/org/p/d/run/a0/1"),
        ("s3://bucket", "s3://bucket/xt/a0/1"),
        ("gs://b/x", "gs://b/xt/x/a0/1"),
        ("", ""),
    ],
)
def test_output_uri(base: str, expected: str) -> None:
    assert naming.output_uri("flyte", "r1-a0", base, "a0", 0) == expected


def test_output_uri_uses_attempt() -> None:
    assert naming.output_uri("flyte", "r1-a0", "s3://b/r", "a0", 3) == "s3://b/xt/r/a0/3"


def test_name_is_run_and_action_then_a_hash_of_the_identity() -> None:
    name = naming.object_name(ident("org", "proj", "development", "r1", "a0"))
    assert re.fullmatch(r"r1-a0-[0-9a-f]{12}", name)
    assert naming.object_name(ident("", "proj", "dev", "r1", "a0")) != name


def test_invalid_parts_are_cleaned() -> None:
    name = naming.object_name(ident("o", "p", "dev", "My_Run", "A.0"))
    assert name.startswith("my-run-a-0-")
    assert DNS_1035_LABEL.match(name)


def test_name_starts_with_a_letter() -> None:
    # Services named after the executor's pods must be DNS-1035 labels.
    assert naming.object_name(ident("o", "p", "d", "123", "4")).startswith("x123-4-")
    assert naming.object_name(ident("o", "p", "d", "_", "_")).startswith("x-")


def test_runs_in_different_projects_or_domains_do_not_collide() -> None:
    a = naming.object_name(ident("o", "p1", "dev", "r", "a0"))
    b = naming.object_name(ident("o", "p2", "dev", "r", "a0"))
    c = naming.object_name(ident("o", "p1", "prod", "r", "a0"))
    d = naming.object_name(ident("o2", "p1", "dev", "r", "a0"))
    assert len({a, b, c, d}) == 4


def test_longest_identifiers_leave_room_for_the_pod_suffix() -> None:
    long63 = "A" * 63
    name = naming.object_name(ident(long63, long63, long63, "R" * 30, "B" * 30))
    assert len(name) == naming.MAX_OBJECT_NAME and DNS_1035_LABEL.match(name)
    assert len(f"{name}-{10**9}") <= 63


part = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=63
)
short = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=30
)


@settings(max_examples=300, deadline=None)
@given(org=part, project=part, domain=part, run=short, action=short)
def test_names_are_short_dns_1035_labels(
    org: str, project: str, domain: str, run: str, action: str
) -> None:
    name = naming.object_name(ident(org, project, domain, run, action))
    assert len(name) <= naming.MAX_OBJECT_NAME
    assert DNS_1035_LABEL.match(name), name
    assert name == naming.object_name(ident(org, project, domain, run, action))


@settings(max_examples=300, deadline=None)
@given(a=st.tuples(part, part, part, short, short), b=st.tuples(part, part, part, short, short))
def test_names_are_unique_per_identifier(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    if a != b:
        assert naming.object_name(ident(*a)) != naming.object_name(ident(*b))


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=100))
def test_label_values_are_valid(value: str) -> None:
    out = naming.label_value(value)
    assert len(out) <= 63 and LABEL_VALUE.match(out)
    if naming.is_label_value(value) and not re.search(r"-[0-9a-f]{10}$", value):
        assert out == value


def test_labels_and_children_selector() -> None:
    child = ident("o", "p", "dev", "r1", "c1")
    labels = naming.action_labels(child, "condition", "a0")
    assert labels == {
        "flyte.org/org": "o",
        "flyte.org/project": "p",
        "flyte.org/domain": "dev",
        "flyte.org/run": "r1",
        "flyte.org/action": "c1",
        "flyte.org/action-type": "condition",
        "flyte.org/is-root": "false",
        "flyte.org/parent": "a0",
    }
    selector = naming.children_selector(ident("o", "p", "dev", "r1", "a0"))
    assert selector.items() <= labels.items()
    root = naming.action_labels(ident("o", "p", "dev", "r1", "a0"), "task", None)
    assert root["flyte.org/is-root"] == "true" and "flyte.org/parent" not in root
    hashed = naming.action_labels(ident("o", "p" * 70, "dev", "r1", "a0"), "task", None)
    assert hashed["flyte.org/project"] == naming.label_value("p" * 70)
    assert len(hashed["flyte.org/project"]) <= 63


@pytest.mark.parametrize(
    ("a", "b"),
    [("abc", "ABC"), ("a-b", "a_b"), ("a-b", "a.b"), ("x", "x-"), ("run", "run ")],
)
def test_near_collisions_stay_distinct(a: str, b: str) -> None:
    assert naming.object_name(ident("o", "p", "d", a, "n")) != naming.object_name(
        ident("o", "p", "d", b, "n")
    )
    assert naming.label_value(a) != naming.label_value(b)
