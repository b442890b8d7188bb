"""The rule language: mercure rules keep their meaning; rule authors can neither escape nor hang it.

A series arrives with its tags; each rule either matches, does not match, or does not match and
says why (the UI shows that text). Study completion has its own small language of quoted series
descriptions.
"""

import builtins
import time
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.rules import (
    MAX_RULE_LENGTH,
    TIME_LIMIT_SECONDS,
    RuleOutcome,
    check,
    check_completion_series,
    completion_series_met,
    evaluate,
    referenced_tags,
)

CARDIAC_CINE: Mapping[str, str] = {
    "Modality": "MR",
    "SeriesDescription": "CINE 2ch",
    "SliceThickness": "1.5",
    "EchoTime": "2",
    "ReceiverAET": "az_research",
    "ImageType": "ORIGINAL\\PRIMARY\\M",
    "ManufacturerModelName": "Trio",
}

MATCH = RuleOutcome(matched=True, error=None)
NO_MATCH = RuleOutcome(matched=False, error=None)

QUICKLY = 0.5  # seconds of CPU time: "well under a second", however busy the machine is
HUNG = 5.0  # seconds of wall-clock time: only an evaluator that blocks takes this long


def timed(rule: str, tags: Mapping[str, str] = CARDIAC_CINE) -> tuple[RuleOutcome, float]:
    """Evaluate `rule`; return the outcome and the CPU seconds it took this thread."""
    wall, cpu = time.monotonic(), time.thread_time()
    result = evaluate(rule, tags)
    assert time.monotonic() - wall < HUNG, rule[:80]
    return result, time.thread_time() - cpu


def outcome(rule: str, tags: Mapping[str, str] = CARDIAC_CINE) -> RuleOutcome:
    """Evaluate `rule` against `tags` and insist it came back quickly."""
    result, seconds = timed(rule, tags)
    assert seconds < QUICKLY, rule[:80]
    return result


def error_of(rule: str, tags: Mapping[str, str] = CARDIAC_CINE) -> str:
    """The error text of a rule that must fail: not matched, and an explanation."""
    result = outcome(rule, tags)
    assert not result.matched
    assert result.error is not None, rule[:80]
    return result.error


# ----------------------------------------------------------------- rules from mercure's manual


@pytest.mark.parametrize(
    "rule",
    [
        "'CINE' in tags.SeriesDescription",
        "tags.SeriesDescription.lower() == 'cine 2ch'",
        "float(tags.SliceThickness) < 2.0",
        "('CINE' in tags.SeriesDescription) and (tags.Modality == 'MR')",
        "@Modality@ == 'MR'",
        "'az_' in @ReceiverAET@",
        "('Tr' in @ManufacturerModelName@) or (@ManufacturerModelName@ == 'Trio')",
    ],
)
def test_rules_written_for_mercure_match_a_cardiac_cine(rule: str) -> None:
    assert outcome(rule) == MATCH


def test_an_exact_description_rule_ignores_a_longer_description() -> None:
    assert outcome("tags.SeriesDescription == 'CINE'") == NO_MATCH


# ---------------------------------------------------------------------------- reading tags


def test_at_tag_stands_for_the_value_as_a_string() -> None:
    assert outcome("@EchoTime@ == '2'") == MATCH
    assert outcome("@EchoTime@ == 2") == NO_MATCH
    assert outcome("int(@EchoTime@) + 1 == 3") == MATCH


def test_at_tag_inside_quotes_is_only_text_as_in_mercure() -> None:
    assert outcome("'@Modality@' == 'MR'") == NO_MATCH
    assert outcome("'@Modality@' == '@' + 'Modality@'") == MATCH


def test_at_tag_names_are_case_sensitive_and_a_missing_one_is_no_match_without_error() -> None:
    assert outcome("@modality@ == 'MR'") == NO_MATCH
    assert outcome("@PatientWeight@ == '70'") == NO_MATCH


def test_tags_attribute_prefers_the_exact_name_then_ignores_case() -> None:
    tags = {"Foo": "upper", "foo": "lower"}
    assert outcome("tags.foo == 'lower'", tags) == MATCH
    assert outcome("tags.Foo == 'upper'", tags) == MATCH
    assert outcome("tags.seriesdescription == 'CINE 2ch'") == MATCH
    assert outcome("tags.SERIESDESCRIPTION == 'CINE 2ch'") == MATCH


def test_tags_subscript_reads_the_exact_name_only() -> None:
    assert outcome("tags['Modality'] == 'MR'") == MATCH
    assert outcome('tags["modality"] == "MR"') == NO_MATCH


def test_a_rule_reading_a_missing_tag_does_not_match_and_is_not_an_error() -> None:
    assert outcome("tags.PatientWeight == '70'") == NO_MATCH
    assert outcome("tags['PatientWeight'] == '70'") == NO_MATCH


def test_a_missing_tag_spoils_the_whole_rule_even_inside_or_as_in_mercure() -> None:
    assert outcome("tags.PatientWeight == '70' or tags.Modality == 'MR'") == NO_MATCH


def test_optional_tags_are_guarded_with_in_tags() -> None:
    rule = "('PatientWeight' in tags and tags.PatientWeight == '70') or tags.Modality == 'MR'"
    assert outcome(rule) == MATCH
    assert outcome("'PatientWeight' not in tags") == MATCH
    assert outcome("'Modality' in tags") == MATCH


def test_every_tag_value_is_a_string_until_converted() -> None:
    assert outcome("tags.EchoTime == 2") == NO_MATCH
    assert outcome("int(tags.EchoTime) == 2") == MATCH
    assert outcome("float(tags.SliceThickness) * 2 == 3.0") == MATCH
    assert "TypeError" in error_of("tags.SliceThickness + 1")


# ---------------------------------------------------------------------- the expression language


@pytest.mark.parametrize(
    "rule",
    [
        # and / or / not
        "tags.Modality == 'MR' and not tags.Modality == 'CT'",
        "tags.Modality == 'CT' or tags.Modality == 'MR'",
        "not (tags.Modality == 'CT')",
        # comparisons, chained
        "tags.Modality != 'CT'",
        "1 < float(tags.SliceThickness) <= 1.5 < 2",
        "tags.Modality >= 'MR' > 'CT'",
        # in / not in over strings, lists, tuples and sets
        "tags.Modality in ['CT', 'MR']",
        "tags.Modality in ('CT', 'MR')",
        "tags.Modality in {'CT', 'MR'}",
        "tags.Modality not in ['CT', 'PT']",
        "'2ch' in tags.SeriesDescription",
        "(1, 'a') in [(1, 'a'), (2, 'b')]",
        # arithmetic
        "int(tags.EchoTime) * 3 - 1 == 5",
        "7 / 2 == 3.5 and 7 // 2 == 3 and 7 % 2 == 1 and 2 ** 10 == 1024",
        "-int(tags.EchoTime) == -2 and +1 == 1",
        "'ab' + 'cd' == 'abcd' and 'ab' * 2 == 'abab' and [0] * 3 == [0, 0, 0]",
        # functions
        "len(tags.Modality) == 2",
        "str(int(tags.EchoTime) + 1) == '3'",
        "bool(tags.Modality) and not bool('')",
        "min(3, 1, 2) == 1 and max([3, 1, 2]) == 3 and abs(-4) == 4",
        "round(2.567, 2) == 2.57 and round(2.5) == 2",
        "int('ff', 16) == 255",
        "len(tags) == 7",
        # string methods, subscripts and slices
        "tags.SeriesDescription.upper() == 'CINE 2CH'",
        "tags.SeriesDescription.startswith('CINE') and tags.SeriesDescription.endswith('2ch')",
        "tags.ImageType.split('\\\\')[1] == 'PRIMARY'",
        "tags.ImageType.split('\\\\')[-1] == 'M'",
        "'  x '.strip() == 'x' and 'xxy'.lstrip('x') == 'y' and 'yxx'.rstrip('x') == 'y'",
        "tags.SeriesDescription.replace(' ', '_') == 'CINE_2ch'",
        "tags.SeriesDescription.find('2ch') == 5 and 'aXa'.count('a') == 2",
        "'Straße'.casefold() == 'strasse' and 'cine 2ch'.title() == 'Cine 2Ch'",
        "tags.EchoTime.isdigit() and not tags.SliceThickness.isdigit()",
        "tags.SeriesDescription[:4] == 'CINE' and tags.SeriesDescription[::-1][0] == 'h'",
        "tags.SeriesDescription[0] == 'C'",
        # conditional expression
        "(float(tags.SliceThickness) if tags.Modality == 'MR' else 99.0) < 2",
    ],
)
def test_the_language_constructs(rule: str) -> None:
    assert outcome(rule) == MATCH


@pytest.mark.parametrize(
    ("rule", "matched"),
    [
        ("tags.SeriesDescription", True),
        ("''", False),
        ("[]", False),
        ("['x']", True),
        ("0", False),
        ("0.5", True),
        ("None", False),
        ("'CINE' in tags.SeriesDescription and tags.Modality", True),
    ],
)
def test_a_value_that_is_not_a_bool_matches_by_python_truthiness(rule: str, matched: bool) -> None:
    assert outcome(rule) == RuleOutcome(matched=matched, error=None)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("int('abc')", "ValueError: invalid literal for int() with base 10: 'abc'"),
        ("float(tags.Modality) > 1", "ValueError: could not convert string to float: 'MR'"),
        ("1 / 0", "ZeroDivisionError: division by zero"),
        ("tags.Modality < 1", "TypeError: '<' not supported"),
        ("tags.Modality[10]", "IndexError: string index out of range"),
        ("min([])", "ValueError"),
        ("int(tags.EchoTime).lower()", "lower() on int"),
        ("str([1, 2])", "str() of a list"),
        ("(-8) ** 0.5", "complex"),
    ],
)
def test_a_rule_that_raises_does_not_match_and_says_why(rule: str, expected: str) -> None:
    assert expected in error_of(rule)


def test_rules_are_interpreted_without_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("user text reached eval/exec")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert outcome("@Modality@ == 'MR' and float(tags.SliceThickness) < 2") == MATCH


# --------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("__import__('os')", "names starting with '_'"),
        ("__import__('os').system('true')", "not allowed"),
        ("tags.__class__", "names starting with '_'"),
        ("tags._tags", "names starting with '_'"),
        ("().__class__.__bases__[0].__subclasses__()", "names starting with '_'"),
        ("'x'.__len__()", "names starting with '_'"),
        ("open('/etc/passwd')", "function 'open'"),
        ("open('/etc/passwd').read()", "not allowed"),
        ("eval('1')", "function 'eval'"),
        ("getattr(tags, 'x')", "function 'getattr'"),
        ("os", "unknown name 'os'"),
        ("len", "'len' must be called"),
        ("'x'.format", "attribute 'format'"),
        ("'{0.__class__}'.format(1)", "method 'format'"),
        ("'x'.join(['a'])", "method 'join'"),
        ("'x'.ljust(10**9)", "method 'ljust'"),
        ("tags.Modality.lower", "attribute 'lower'"),
        ("tags.lower()", "tag value"),
        ("lambda: 1", "lambda"),
        ("(lambda: 1)()", "only named functions"),
        ("[c for c in tags.Modality]", "comprehensions"),
        ("{c for c in 'ab'}", "comprehensions"),
        ("(c for c in 'ab')", "generator expressions"),
        ("any(c for c in 'ab')", "function 'any'"),
        ("(x := 1)", ":="),
        ("f'{tags.Modality}'", "f-strings"),
        ("{'a': 1}", "dict displays"),
        ("[*'ab']", "* unpacking"),
        ("int(x=1)", "keyword arguments"),
        ("tags.Modality is 'MR'", "'is'"),
        ("1 @ 2", "operator '@'"),
        ("1 | 2", "bitwise"),
        ("b'x'", "constant of type bytes"),
        ("1j", "constant of type complex"),
        ("...", "constant of type ellipsis"),
        ("min(tags)", "min(tags)"),
        ("'%s' % tags.Modality", "'%' string formatting"),
    ],
)
def test_constructs_outside_the_language_are_refused(rule: str, expected: str) -> None:
    assert expected in error_of(rule)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("9**9**9", "power over 4096 bits"),
        ("2 ** 4096", "integer over 4096 bits"),
        ("'a' * 10**9", "repetition would build more than 100000"),
        ("10**9 * 'a'", "repetition would build more than 100000"),
        ("[[0] * 1000] * 1000", "repetition would build more than 100000"),
        ("('a' * 50000).replace('a', 'bbb')", "replace() would build more than 100000"),
        ("('a' * 99999).replace('', 'b')", "replace() would build more than 100000"),
        ("('a' * 60000) + ('a' * 60000)", "value over 100000"),
        ("int('9' * 4000)", "integer over 4096 bits"),
        ("int('9' * 50000)", "int() of text over 4196 characters"),
        ("round(5, -10**9)", "round() to more than 100 digits"),
        ("(" * 500 + "1" + ")" * 500, "too many nested parentheses"),
        ("not " * 500 + "1", "nested more than 50 levels deep"),
        ("-" * 5000 + "1", "nested too deeply"),
        ("1" + " + 1" * 1500, "nested"),
        ("[" + "1, " * 2500 + "1]", "more than 2000 syntax nodes"),
        ("'" + "a" * MAX_RULE_LENGTH + "'", "at most 10000 allowed"),
    ],
)
def test_limits_refuse_expensive_rules_before_they_run(rule: str, expected: str) -> None:
    assert expected in error_of(rule)


def test_values_just_under_the_limits_are_fine() -> None:
    assert outcome("len('a' * 100000) == 100000") == MATCH
    assert outcome("2 ** 4095 > 0") == MATCH
    assert outcome("len(('ab ' * 30000).split()) == 30000") == MATCH


def test_an_evaluation_past_its_time_limit_stops_with_an_error() -> None:
    long_enough_to_look_at_the_clock = " and ".join(["tags.Modality == 'MR'"] * 10)
    result = evaluate(long_enough_to_look_at_the_clock, CARDIAC_CINE, time_limit=-1.0)
    assert result == RuleOutcome(
        matched=False, error="limit exceeded: evaluation took more than -1.0 s of CPU time"
    )


@pytest.mark.parametrize(
    "rule",
    [
        "(" + "('a' * 100000).upper() == " * 200 + "'x')",
        " or ".join(["('x' in [0] * 99999)"] * 200),
        " or ".join(["(('ab ' * 30000).split() == ('ab ' * 30000).split('x'))"] * 100),
    ],
)
def test_legal_rules_doing_the_most_work_allowed_stop_within_the_time_limit(rule: str) -> None:
    assert check(rule) is None
    result, seconds = timed(rule)
    assert not result.matched
    assert seconds < TIME_LIMIT_SECONDS + 0.05


# ----------------------------------------------------------------------------------- check()


def test_check_accepts_a_good_rule_without_knowing_any_tags() -> None:
    assert check("@Anything@ == 'x' and tags.Whatever.lower() in ['a', 'b']") is None


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("tags.Modality ==", "syntax error: invalid syntax"),
        ("tags.Modality == == 'MR'", "syntax error: invalid syntax at column 18"),
        ("'unterminated", "syntax error: unterminated string literal"),
        ("tags.Modality = 'MR'", "syntax error"),
        ("", "syntax error"),
        ("import os", "syntax error"),
        ("'\x00'", "null bytes"),
        ("__import__('os')", "not allowed: names starting with '_'"),
        ("x" * (MAX_RULE_LENGTH + 1), "limit exceeded"),
    ],
)
def test_check_reports_syntax_and_safety_problems(rule: str, expected: str) -> None:
    problem = check(rule)
    assert problem is not None
    assert expected in problem


def test_check_leaves_runtime_failures_to_evaluation() -> None:
    assert check("int('abc')") is None


# ------------------------------------------------------------------------------ referenced tags


def test_referenced_tags_lists_every_tag_the_rule_reads() -> None:
    rule = (
        "@Modality@ == 'MR' and tags.seriesDescription.lower() == 'x' "
        "and tags['EchoTime'] > '1' and 'PatientWeight' in tags and '@NotATag@' != ''"
    )
    assert referenced_tags(rule) == {"Modality", "seriesDescription", "EchoTime", "PatientWeight"}


def test_referenced_tags_of_a_broken_rule_is_empty() -> None:
    assert referenced_tags("tags.Modality ==") == set()


# --------------------------------------------------------------------- study completion series

RECEIVED = ["AX T2 FLAIR", "Sag T1 tse", "localizer"]


@pytest.mark.parametrize(
    ("expression", "met"),
    [
        ("'Axial T2' and ('Sag T1 GRE' or 'Sag T1 TSE')", False),
        ("'AX T2' and ('Sag T1 GRE' or 'Sag T1 TSE')", True),
        ("'ax t2' and 'SAG T1 TSE'", True),
        ("'flair'", True),
        ("'COR'", False),
        ("'SAG' or ('COR' and 'AX')", True),
        ("('SAG' or 'COR') and 'AX'", True),
        ("'COR' or 'SAG' and 'AX'", True),
        ("('COR' or 'SAG') and 'DWI'", False),
        ("not 'COR'", True),
        ("not 'SAG'", False),
        ("'AX' and not ('COR' or 'DWI')", True),
        ("(('localizer'))", True),
        ("'AX'and'SAG'", True),
    ],
)
def test_completion_series_are_case_insensitive_substrings_combined_with_logic(
    expression: str, met: bool
) -> None:
    assert check_completion_series(expression) is None
    assert completion_series_met(expression, RECEIVED) is met


def test_completion_needs_at_least_one_received_series() -> None:
    assert completion_series_met("'AX'", []) is False
    assert completion_series_met("", []) is False


def test_an_empty_completion_expression_is_met_but_not_valid_to_save() -> None:
    assert completion_series_met("", RECEIVED) is True
    assert check_completion_series("") == "Value cannot be empty"
    assert check_completion_series("   ") == "Value cannot be empty"


def test_a_broken_completion_expression_is_never_met() -> None:
    assert completion_series_met("'AX' and", RECEIVED) is False
    assert completion_series_met("__import__('os')", RECEIVED) is False


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("'AX' and", "Expected a series name in '...' instead of the end"),
        ("'AX", "Series names not properly enclosed by '...'"),
        ('"AX"', "Series names must be enclosed by '...'"),
        ("AX", "Invalid entry 'AX'"),
        ("'AX' & 'T2'", "Invalid entry '&'"),
        ("'AX' 'T2'", "Unexpected 'T2' at position 5"),
        ("('AX'", "Expected ')' instead of the end"),
        ("'AX')", "Unexpected ')' at position 4"),
        ("(" * 60 + "'AX'" + ")" * 60, "nested more than 50 levels deep"),
        ("not " * 60 + "'AX'", "nested more than 50 levels deep"),
        ("'a' or " * 2000 + "'a'", "at most 10000 allowed"),
    ],
)
def test_check_completion_series_explains_what_is_wrong(expression: str, expected: str) -> None:
    problem = check_completion_series(expression)
    assert problem is not None
    assert expected in problem


# ------------------------------------------------------------------------------------ properties

RULE_PIECES = [
    "tags.Modality",
    "tags.Missing",
    "@Modality@",
    "@SliceThickness@",
    "tags['EchoTime']",
    "'MR'",
    "'a'",
    "'@'",
    "1",
    "2.5",
    "10**9",
    "9",
    "**",
    "*",
    "+",
    "-",
    "/",
    "%",
    "==",
    "<",
    "in",
    "not",
    "and",
    "or",
    "if",
    "else",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ".lower()",
    ".split()",
    ".replace('a', 'aa')",
    "int(",
    "float(",
    "len(",
    "round(",
    "min(",
    "tags",
    "__class__",
    ".",
    "lambda",
    "x",
]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_evaluate_never_raises_and_returns_in_time_for_any_text(rule: str) -> None:
    result, seconds = timed(rule)
    assert seconds < TIME_LIMIT_SECONDS + 0.05
    assert isinstance(result.matched, bool)
    assert result.error is None or not result.matched


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(RULE_PIECES), max_size=40).map(" ".join))
def test_evaluate_never_raises_and_returns_in_time_for_rule_like_text(rule: str) -> None:
    result, seconds = timed(rule)
    assert seconds < TIME_LIMIT_SECONDS + 0.05
    assert result.error is None or not result.matched
    assert (check(rule) is None) or result.error is not None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["'AX'", "'sag'", "'x'", "and", "or", "not", "(", ")", "'"])).map(
        " ".join
    ),
    st.lists(st.sampled_from([*RECEIVED, "ax", ""]), max_size=4),
)
def test_completion_series_never_raises(expression: str, received: list[str]) -> None:
    assert isinstance(completion_series_met(expression, received), bool)
    problem = check_completion_series(expression)
    assert problem is None or isinstance(problem, str)
