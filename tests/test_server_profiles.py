"""Server profiles as data (issue 13): the bundled files, the loader's rules, scopes, `describe`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from adapter.errors import ConfigError, ExitCode, MappingError
from adapter.fhir.capability import ElementsSupport, ResourceCapabilities, ServerCapabilities
from adapter.servers import (
    FIELD_PATHS,
    GENERIC,
    ServerProfile,
    TokenQuirks,
    TypeRules,
    describe,
    field_values,
    load_profile,
    load_profiles,
    non_generic_fields,
    profile_named,
    scopes_for,
)
from adapter.site_mappings import default_mappings_dir

BUNDLED = ("generic", "hapi", "epic", "oracle-health", "medplum")
MINIMAL = "name: {name}\ntitle: A server family\n"


@pytest.fixture(scope="module")
def bundled() -> dict[str, ServerProfile]:
    return load_profiles(default_mappings_dir())


def write(folder: Path, name: str, text: str) -> Path:
    """`folder/servers/<name>.yaml` holding `text` (dedented)."""
    path = folder / "servers" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- the bundled profiles ------------------------------------------------------------------------


def test_the_bundled_folder_holds_the_five_families(bundled):
    """mappings/servers/ has generic, hapi, epic, oracle-health and medplum, and nothing else."""
    assert sorted(bundled) == sorted(BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_profile_loads_and_is_named_after_its_file(name):
    """Each file loads on its own, and its `name` is its file name."""
    profile = load_profile(default_mappings_dir() / "servers" / f"{name}.yaml")
    assert profile.name == name
    assert profile.title


@pytest.mark.parametrize("name", BUNDLED)
def test_every_non_generic_field_of_a_bundled_profile_cites_a_url(bundled, name):
    """A stated fact that differs from generic has a source, and every source starts with a URL."""
    profile = bundled[name]
    for path in non_generic_fields(profile):
        assert path in profile.sources, path
    for path, source in profile.sources.items():
        assert path in FIELD_PATHS
        assert source.startswith(("https://", "http://")), path


@pytest.mark.parametrize("name", BUNDLED)
def test_uncited_fields_keep_the_generic_value(bundled, name):
    """A field no source was found for is listed under `uncited` and says what generic says."""
    profile = bundled[name]
    generic = field_values(GENERIC)
    mine = field_values(profile)
    for path in profile.uncited:
        assert mine[path] == generic[path], path
        assert path not in profile.sources


def test_generic_yaml_states_the_built_in_defaults(bundled):
    """generic.yaml and the ServerProfile defaults are the same values."""
    assert field_values(bundled["generic"]) == field_values(GENERIC)
    assert non_generic_fields(bundled["generic"]) == []


def test_epic_reads_per_patient_with_one_patient_and_code_as_a_post_filter(bundled):
    """Epic: patient required and single-valued; Condition's code applied after the search."""
    epic = bundled["epic"]
    assert epic.read == "per-patient"
    assert epic.needs_one_patient("Condition")
    assert epic.needs_one_patient("Observation")
    assert not epic.rules("Condition").honours("code")
    assert epic.export == ("group",)


def test_oracle_health_has_no_code_search_for_condition_and_procedure(bundled):
    """Oracle Health: patient required; Condition and Procedure list no `code`; _count <= 200."""
    oracle = bundled["oracle-health"]
    assert oracle.read == "per-patient"
    assert oracle.needs_one_patient("Observation")
    assert not oracle.rules("Condition").honours("code")
    assert not oracle.rules("Procedure").honours("code")
    assert oracle.rules("Observation").honours("code")
    assert oracle.page_size(1000) == 200
    assert oracle.token.scope_version == "v1"
    assert set(oracle.export) == {"group", "patient"}


def test_medplum_caps_count_at_1000_and_exports_system_and_group(bundled):
    medplum = bundled["medplum"]
    assert medplum.read == "batch"
    assert medplum.page_size(5000) == 1000
    assert set(medplum.export) == {"system", "group"}


# --- choosing a profile --------------------------------------------------------------------------


def test_an_unknown_profile_is_a_config_error_naming_the_known_ones(bundled):
    with pytest.raises(ConfigError) as err:
        profile_named("cerner", bundled)
    assert str(err.value) == (
        "unknown server profile 'cerner'; known: epic, generic, hapi, medplum, oracle-health"
    )
    assert err.value.exit_code is ExitCode.USAGE


def test_generic_exists_even_without_a_servers_folder(tmp_path):
    """A mappings folder without servers/ still has `generic`: the built-in defaults."""
    assert load_profiles(tmp_path) == {"generic": GENERIC}


def test_a_site_file_replaces_the_bundled_profile_of_its_name_whole(tmp_path):
    """site/servers/epic.yaml is the whole epic profile: nothing of the bundled one is kept."""
    site = tmp_path / "site"
    write(site, "epic", MINIMAL.format(name="epic"))
    profiles = load_profiles(default_mappings_dir(), site)
    assert profiles["epic"].read == "batch"
    assert profiles["epic"].searches == {}
    assert profiles["oracle-health"].read == "per-patient"  # the others are untouched


def test_a_site_file_with_a_new_name_adds_a_profile(tmp_path):
    site = tmp_path / "site"
    write(
        site,
        "meditech",
        """\
        name: meditech
        title: A site's own server
        read: per-patient
        max_count: 50
        sources:
          read: https://example.org/fhir-guide patient required on every search
          max_count: https://example.org/fhir-guide _count at most 50
        """,
    )
    profiles = load_profiles(default_mappings_dir(), site)
    assert profile_named("meditech", profiles).page_size(1000) == 50
    assert "epic" in profiles


# --- refused files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        pytest.param(
            "name: x\ntitle: T\nread_mode: batch\n",
            "read_mode",
            "Extra inputs are not permitted",
            id="unknown-field",
        ),
        pytest.param(
            "name: x\ntitle: T\nread: sometimes\n", "read", "'batch' or 'per-patient'", id="read"
        ),
        pytest.param(
            "name: x\ntitle: T\nsearches: {Encounter: {required: [patient]}}\n",
            "searches.Encounter",
            "Input should be",
            id="search-type",
        ),
        pytest.param(
            "name: x\ntitle: T\nexport: [everything]\n", "export.0", "Input should be", id="export"
        ),
        pytest.param(
            "name: x\ntitle: T\nsources: {max_cout: https://example.org a}\n",
            "sources",
            "'max_cout' is not a profile field",
            id="source-field",
        ),
        pytest.param(
            "name: x\ntitle: T\nmax_count: 5\nsources: {max_count: the vendor said so}\n",
            "sources",
            "must start with its http(s) URL",
            id="source-url",
        ),
        pytest.param(
            "name: x\ntitle: T\nheaders: {Authorization: Bearer abc}\n",
            "headers",
            "'Authorization' may not be set",
            id="secret-header",
        ),
        pytest.param(
            "name: x\ntitle: T\ntoken: {algorithms: [HS256]}\n",
            "token.algorithms.0",
            "Input should be",
            id="algorithm",
        ),
    ],
)
def test_a_bad_profile_is_refused_with_its_file_and_field(tmp_path, text, field, reason):
    path = write(tmp_path, "x", text)
    with pytest.raises(MappingError) as err:
        load_profiles(tmp_path)
    assert err.value.file == str(path)
    assert err.value.field == field
    assert reason in err.value.reason
    assert err.value.exit_code is ExitCode.USAGE


def test_a_non_generic_field_without_a_source_is_refused_at_its_line(tmp_path):
    """The citation rule: `max_count: 50` with no source names the file, the line and the field."""
    path = write(
        tmp_path, "x", "name: x\ntitle: T\nsearches:\n  Observation:\n    required: [patient]\n"
    )
    with pytest.raises(MappingError) as err:
        load_profiles(tmp_path)
    assert err.value.file == str(path)
    assert err.value.line == 5
    assert err.value.field == "searches.Observation.required"
    assert "cites no source" in err.value.reason
    assert str(err.value).startswith(f"{path}:5 (searches.Observation.required): ")


def test_an_uncited_field_may_not_differ_from_generic(tmp_path):
    write(
        tmp_path,
        "x",
        """\
        name: x
        title: T
        max_count: 50
        sources: {max_count: https://example.org/guide 50 at most}
        uncited: [max_count]
        """,
    )
    with pytest.raises(MappingError, match="listed under `uncited` but differs"):
        load_profiles(tmp_path)


def test_a_field_cannot_be_both_cited_and_uncited(tmp_path):
    write(
        tmp_path,
        "x",
        """\
        name: x
        title: T
        sources: {elements: https://example.org/guide honoured}
        uncited: [elements]
        """,
    )
    with pytest.raises(MappingError, match="both cited"):
        load_profiles(tmp_path)


def test_the_name_must_be_the_file_name(tmp_path):
    path = write(tmp_path, "epic2", MINIMAL.format(name="epic"))
    with pytest.raises(MappingError) as err:
        load_profiles(tmp_path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 1, "name")


def test_an_empty_file_is_refused(tmp_path):
    write(tmp_path, "x", "")
    with pytest.raises(MappingError, match="a server profile is a mapping"):
        load_profiles(tmp_path)


def test_a_site_profile_is_checked_like_a_bundled_one(tmp_path):
    """A site's epic.yaml that makes `_count` smaller without a source is refused too."""
    site = tmp_path / "site"
    path = write(site, "epic", MINIMAL.format(name="epic") + "max_count: 10\n")
    with pytest.raises(MappingError) as err:
        load_profiles(default_mappings_dir(), site)
    assert (err.value.file, err.value.field) == (str(path), "max_count")


# --- token scopes --------------------------------------------------------------------------------

V1 = ServerProfile(name="v1", token=TokenQuirks(scope_version="v1"))


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (["system/Observation.rs"], ["system/Observation.read"]),
        (["system/Patient.r", "system/Patient.s"], ["system/Patient.read"]),
        (["system/*.cruds"], ["system/*.read", "system/*.write"]),
        (["system/Group.c"], ["system/Group.write"]),
        (["system/Condition.read", "system/Condition.rs"], ["system/Condition.read"]),
        (["openid", "system/Procedure.rs"], ["openid", "system/Procedure.read"]),
    ],
)
def test_a_v1_profile_gets_v2_scopes_as_read_and_write(scopes, expected):
    assert scopes_for(V1, scopes) == expected


def test_a_v2_profile_gets_its_scopes_unchanged():
    scopes = ["system/Observation.rs", "system/Observation.rs?category=laboratory"]
    assert scopes_for(GENERIC, scopes) == scopes


def test_a_v2_scope_query_has_no_v1_form():
    """Dropping `?category=` would ask a v1 server for more than was meant: refused."""
    with pytest.raises(ConfigError, match="has a query"):
        scopes_for(V1, ["system/Observation.rs?category=laboratory"])


def test_oracle_health_asks_for_v1_scopes(bundled):
    assert scopes_for(bundled["oracle-health"], ["system/Condition.rs"]) == [
        "system/Condition.read"
    ]


# --- what `check` says ---------------------------------------------------------------------------


def caps(*resources: ResourceCapabilities, export: bool = False) -> ServerCapabilities:
    return ServerCapabilities(
        fhir_version="4.0.1",
        resources=resources,
        operations=frozenset({"export"}) if export else frozenset(),
        elements=ElementsSupport.IGNORED,
    )


def searchable(kind: str, *params: str, export: bool = False) -> ResourceCapabilities:
    return ResourceCapabilities(
        type=kind,
        interactions=frozenset({"read", "search-type"}),
        search_params=frozenset(params),
        operations=frozenset({"export"}) if export else frozenset(),
    )


def test_describe_epic_without_a_capability_statement(bundled):
    lines = describe(bundled["epic"], None, "per-patient")
    assert lines[:6] == [
        "profile epic (Epic (Epic on FHIR, R4)): reads per patient",
        "Condition: patient required, single-valued; code is a post-filter",
        "Observation: patient required, single-valued",
        "_count: the profile states no limit",
        "_elements: profile allows it; sent only where the probe sees it honoured",
        "$export: profile group",
    ]
    assert lines[6].startswith("uncited (generic values kept): searches.Observation.post_filters")
    assert not any(line.startswith("warning:") for line in lines)


def test_describe_warns_where_the_capability_statement_disagrees(bundled):
    """The server lists no `patient` for Observation and no Group $export: two warnings."""
    statement = caps(searchable("Condition", "patient", "code"), searchable("Observation", "code"))
    lines = describe(bundled["epic"], statement, "per-patient")
    assert "$export: profile group; CapabilityStatement: none" in lines
    assert "_elements: profile allows it; not honoured by the probe; whole resources are read" in (
        lines
    )
    assert [line for line in lines if line.startswith("warning:")] == [
        "warning: Observation: the profile requires 'patient', but the CapabilityStatement "
        "lists no such search parameter",
        "warning: $export: the profile claims group-level export, but the CapabilityStatement "
        "lists none there",
    ]


def test_describe_has_no_warning_where_they_agree(bundled):
    statement = caps(
        searchable("Condition", "patient"),
        searchable("Observation", "patient", "code"),
        searchable("Group", "_id", export=True),
    )
    lines = describe(bundled["epic"], statement, "per-patient")
    assert "$export: profile group; CapabilityStatement: Group" in lines
    assert not any(line.startswith("warning:") for line in lines)


def test_describe_says_when_the_run_reads_otherwise_than_the_profile(bundled):
    head = describe(bundled["epic"], None, "batch")[0]
    assert head == (
        "profile epic (Epic (Epic on FHIR, R4)): reads in batches (many patients a search); "
        "the profile's default is per-patient"
    )


def test_describe_names_observations_searched_by_category_where_code_is_no_filter():
    profile = ServerProfile(
        name="x",
        title="T",
        searches={"Observation": TypeRules(post_filters=frozenset({"code"}))},
        elements=False,
        max_count=100,
        token=TokenQuirks(scope_version="v1"),
    )
    statement = ServerCapabilities(elements=ElementsSupport.HONOURED)
    lines = describe(profile, statement, "per-patient")
    assert "Observation: code is a post-filter (searched by category)" in lines
    assert "_count at most 100" in lines
    assert "_elements: profile says not honoured; whole resources are read" in lines
    assert "token: SMART v1 scopes (system/<Type>.read) are asked for" in lines
    assert lines[-1].startswith("warning: _elements: the profile says not honoured")
