#!/usr/bin/python3
"""check-skips.py BUILD JUNIT... - lists every skipped test in ctest's JUnit
reports (ctest --output-junit, with --test-output-size-passed large enough
to keep every line) and fails on a skip that tests/expected-skips does not
declare for BUILD.

A test skipped is found by what it printed:
  - Criterion (run with --verbose): "[SKIP] suite::name: reason", reported
    as CTEST-NAME/suite::name (Criterion itself counts it as passed);
  - the integration harness: "[HH:MM:SS] SKIP name: reason";
  - any other program: a line "SKIP: reason";
and a test ctest reports as not run (SKIP_RETURN_CODE) without any of them
is listed with "no reason given", which is never expected.
Exit status: 0 when every skip is expected, 1 otherwise, 2 on bad usage."""
import os
import re
import sys
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED = os.path.join(HERE, "expected-skips")

CRITERION = re.compile(r"^\[SKIP\] (\S+?): (.*)$")
HARNESS = re.compile(r"^\[\d\d:\d\d:\d\d\] SKIP (\S+?): (.*)$")
PLAIN = re.compile(r"^SKIP: (.*)$")


def expected(build):
    out = {}
    with open(EXPECTED) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) != 3 or parts[0] not in ("normal", "asan", "tsan"):
                sys.exit(f"{EXPECTED}:{n}: want 'BUILD TEST REASON', BUILD normal, asan or "
                         f"tsan: {line!r}")
            if parts[0] == build:
                out[parts[1]] = parts[2]
    return out


def skips(path):
    """[(test, reason)] in the order of the report."""
    found = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        out = case.findtext("system-out") or ""
        marked = False
        for line in out.splitlines():
            if m := CRITERION.match(line):
                found.append((f"{name}/{m.group(1)}", m.group(2)))
                marked = True
            elif (m := HARNESS.match(line)) or (m := PLAIN.match(line)):
                found.append((name, m.group(m.lastindex)))
                marked = True
        if not marked and (case.get("status") == "notrun" or case.find("skipped") is not None):
            sk = case.find("skipped")
            why = sk.get("message") if sk is not None else "not run"
            found.append((name, f"no reason given ({why})"))
    return found


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    build = sys.argv[1]
    allowed = expected(build)
    bad = total = 0
    for path in sys.argv[2:]:
        if not os.path.exists(path):
            continue
        for test, reason in skips(path):
            total += 1
            if test in allowed:
                print(f"skipped (expected in the {build} build): {test}: {reason}")
            else:
                print(f"SKIPPED, NOT EXPECTED in the {build} build: {test}: {reason}",
                      file=sys.stderr)
                bad += 1
    print(f"{build} build: {total} test(s) skipped, {total - bad} of them expected")
    if bad:
        print(f"{bad} test(s) skipped without being declared in {EXPECTED}", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
