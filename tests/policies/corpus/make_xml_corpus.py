# ruff: noqa: E501  (a data file in Python form: one corpus case per line reads best)
"""Regenerate the FHIR XML corpus (run from the repo root: python tests/policies/corpus/make_xml_corpus.py).

Three kinds of case, listed in xml-manifest.toml with the exact (path, rule) violations:

* the XML twin of every FHIR JSON corpus case that XML can express (``json`` names the twin):
  written by ``to_xml`` (``tests/policies/fhir_xml_writer.py``) from the JSON file, so it must
  give the JSON case's violations exactly;
* hand-written real-shaped XML (the official R4 Patient example's layout: comments, XHTML
  table narrative, a primitive with an extension; data-absent-reason instead of a value);
* XML-only faults: namespace, element order, value attribute, mixed content, repeated single
  element, attributes, narrative namespace, contained wrapper, DOCTYPE (entity expansion, XXE).

The files are committed; this script documents how they were made. Run make_corpus.py first.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parents[2]
sys.path.insert(0, str(REPO))

from make_corpus import write_manifest  # noqa: E402  (this script's folder is sys.path[0])

from tests.policies.fhir_xml_writer import to_xml  # noqa: E402

CASES: list[dict[str, Any]] = []
# JSON cases XML cannot say the same way: a non-array where an array belongs, a string where a
# boolean belongs, an empty array, text that is not JSON (XML has its own versions of these below)
NOT_IN_XML = {"fhir/invalid/patient-name-not-array.json", "fhir/invalid/patient-active-string.json",
              "fhir/invalid/patient-empty-given.json", "fhir/invalid/not-json.json"}


def put(rel: str, type_: str, text: str | bytes, violations: list[tuple[str, str]] | None = None,
        exact: bool = True, note: str = "", twin: str = "") -> None:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    CASES.append({"file": rel, "type": type_, "violations": violations or [], "exact": exact, "note": note,
                  "json": twin})


# ------------------------------------------------------------------ twins of the JSON corpus
for case in tomllib.loads((ROOT / "manifest.toml").read_text())["case"]:
    rel = case["file"]
    if not rel.startswith("fhir/") or rel in NOT_IN_XML:
        continue
    doc = json.loads((ROOT / rel).read_text())
    put("fhir-xml/" + rel[len("fhir/"):].removesuffix(".json") + ".xml", case["type"], to_xml(doc) + "\n",
        [tuple(v) for v in case["violations"]], case["exact"], case.get("note", ""), twin=rel)

patient = (REPO / "examples" / "patient.xml").read_text()
referral = (REPO / "examples" / "referral.xml").read_text()


def swap(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, old
    return text.replace(old, new, count)


# ------------------------------------------------------------------ hand-written valid XML
OFFICIAL = """<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir ../../schema/patient.xsd">
  <id value="example"/>
  <!--   the shape of the official R4 "Patient example", with an NHS number added   -->
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml">
      <table>
        <tbody>
          <tr>
            <td>Name</td>
            <td>Peter James
              <b>Chalmers</b> (&quot;Jim&quot;)
            </td>
          </tr>
          <tr>
            <td>Address</td>
            <td>534 Erewhon, Pleasantville, Vic, 3999</td>
          </tr>
          <tr>
            <td>Contacts</td>
            <td>Home: unknown. Work: (03) 5555 6473</td>
          </tr>
          <tr>
            <td>Id</td>
            <td>MRN: 12345 (Acme Healthcare)<br/>NHS: 900 000 0009</td>
          </tr>
        </tbody>
      </table>
    </div>
  </text>
  <!--   MRN assigned by ACME healthcare on 6-May 2001   -->
  <identifier>
    <use value="usual"/>
    <type>
      <coding>
        <system value="http://terminology.hl7.org/CodeSystem/v2-0203"/>
        <code value="MR"/>
      </coding>
    </type>
    <system value="urn:oid:1.2.36.146.595.217.0.1"/>
    <value value="12345"/>
    <period>
      <start value="2001-05-06"/>
    </period>
    <assigner>
      <display value="Acme Healthcare"/>
    </assigner>
  </identifier>
  <identifier>
    <system value="https://fhir.nhs.uk/Id/nhs-number"/>
    <value value="9000000009"/>
  </identifier>
  <active value="true"/>
  <!--   Peter James Chalmers, but called "Jim"   -->
  <name>
    <use value="official"/>
    <family value="Chalmers"/>
    <given value="Peter"/>
    <given value="James"/>
  </name>
  <name>
    <use value="usual"/>
    <given value="Jim"/>
  </name>
  <name>
    <!--   Maiden names apply for anyone whose name changes as a result of marriage - irrespective of gender   -->
    <use value="maiden"/>
    <family value="Windsor"/>
    <given value="Peter"/>
    <given value="James"/>
    <period>
      <end value="2002"/>
    </period>
  </name>
  <telecom>
    <use value="home"/>
    <!--   home communication details aren't known   -->
  </telecom>
  <telecom>
    <system value="phone"/>
    <value value="(03) 5555 6473"/>
    <use value="work"/>
    <rank value="1"/>
  </telecom>
  <telecom>
    <system value="phone"/>
    <value value="(03) 3410 5613"/>
    <use value="mobile"/>
    <rank value="2"/>
  </telecom>
  <!--   use FHIR code system for male / female   -->
  <gender value="male"/>
  <birthDate value="1974-12-25">
    <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
      <valueDateTime value="1974-12-25T14:35:45-05:00"/>
    </extension>
  </birthDate>
  <deceasedBoolean value="false"/>
  <address>
    <use value="home"/>
    <type value="both"/>
    <text value="534 Erewhon St PeasantVille, Rainbow, Vic  3999"/>
    <line value="534 Erewhon St"/>
    <city value="PleasantVille"/>
    <district value="Rainbow"/>
    <state value="Vic"/>
    <postalCode value="3999"/>
    <period>
      <start value="1974-12-25"/>
    </period>
  </address>
  <contact>
    <relationship>
      <coding>
        <system value="http://terminology.hl7.org/CodeSystem/v2-0131"/>
        <code value="N"/>
      </coding>
    </relationship>
    <name>
      <family value="du Marché">
        <!--   the "du" part is a family name prefix (VV in iso 21090)   -->
        <extension url="http://hl7.org/fhir/StructureDefinition/humanname-own-prefix">
          <valueString value="VV"/>
        </extension>
      </family>
      <given value="Bénédicte"/>
    </name>
    <telecom>
      <system value="phone"/>
      <value value="+33 (237) 998327"/>
    </telecom>
    <address>
      <use value="home"/>
      <type value="both"/>
      <line value="534 Erewhon St"/>
      <city value="PleasantVille"/>
      <postalCode value="3999"/>
    </address>
    <gender value="female"/>
    <period>
      <!--   The contact relationship started in 2012   -->
      <start value="2012"/>
    </period>
  </contact>
  <managingOrganization>
    <reference value="Organization/1"/>
  </managingOrganization>
</Patient>
"""
put("fhir-xml/valid/patient-official-layout.xml", "fhir.r4.Patient", OFFICIAL,
    note="official example layout: xsi:schemaLocation, comments (one inside a primitive), XHTML table narrative")
put("fhir-xml/valid/patient-absent-birthdate-and-element-ids.xml", "fhir.r4.Patient",
    swap(swap(patient, '<birthDate value="1955-02-14"/>',
              '<birthDate>\n    <extension url="http://hl7.org/fhir/StructureDefinition/data-absent-reason">\n'
              '      <valueCode value="unknown"/>\n    </extension>\n  </birthDate>'),
         '<given value="Alan"/>', '<given id="middle" value="Alan"/>'),
    note="a primitive with only an extension (JSON: _birthDate alone) and one with an id (JSON: _given [null, {id}])")
put("fhir-xml/valid/servicerequest-compact-one-line.xml", "fhir.r4.ServiceRequest",
    "".join(line.strip() for line in referral.splitlines()).replace("?><", "?>\n<"),
    note="no whitespace between elements")

# ------------------------------------------------------------------ XML-only faults
put("fhir-xml/invalid/patient-no-namespace.xml", "fhir.r4.Patient",
    swap(patient, '<Patient xmlns="http://hl7.org/fhir">', "<Patient>"), [("", "fhir-xml-namespace")])
put("fhir-xml/invalid/patient-wrong-namespace.xml", "fhir.r4.Patient",
    swap(patient, 'xmlns="http://hl7.org/fhir"', 'xmlns="http://hl7.org/fhir/R4"'), [("", "fhir-xml-namespace")])
put("fhir-xml/invalid/patient-foreign-element.xml", "fhir.r4.Patient",
    swap(patient, '  <active value="true"/>', '  <nhs:verified xmlns:nhs="urn:example:nhs" value="true"/>\n  <active value="true"/>'),
    [("/verified", "fhir-xml-namespace")])
put("fhir-xml/invalid/patient-birthdate-as-text.xml", "fhir.r4.Patient",
    swap(patient, '<birthDate value="1955-02-14"/>', "<birthDate>1955-02-14</birthDate>"), [("/birthDate", "fhir-xml-value")])
put("fhir-xml/invalid/servicerequest-status-without-value.xml", "fhir.r4.ServiceRequest",
    swap(referral, '<status value="active"/>', "<status/>"), [("/status", "fhir-xml-value")],
    note="reported once: not also fhir-required")
put("fhir-xml/invalid/patient-given-without-value.xml", "fhir.r4.Patient",
    swap(patient, '<given value="Alan"/>', '<given valeu="Alan"/>'),
    [("/name/0/given/1", "fhir-xml-attribute"), ("/name/0/given/1", "fhir-xml-value")])
put("fhir-xml/invalid/patient-mixed-content.xml", "fhir.r4.Patient",
    swap(patient, "  <name>\n", "  <name>John Smith\n"), [("/name/0", "fhir-xml-mixed-content")])
put("fhir-xml/invalid/patient-gender-twice.xml", "fhir.r4.Patient",
    swap(patient, '<gender value="male"/>', '<gender value="male"/>\n  <gender value="female"/>'),
    [("/gender", "fhir-cardinality")])
put("fhir-xml/invalid/patient-birthdate-before-gender.xml", "fhir.r4.Patient",
    swap(swap(patient, '  <gender value="male"/>\n', ""), '  <birthDate value="1955-02-14"/>\n',
         '  <birthDate value="1955-02-14"/>\n  <gender value="male"/>\n'),
    [("/gender", "fhir-xml-order")])
put("fhir-xml/invalid/patient-given-split-by-family.xml", "fhir.r4.Patient",
    swap(patient, '<family value="Smith"/>\n    <given value="John"/>', '<given value="John"/>\n    <family value="Smith"/>'),
    [("/name/0/family", "fhir-xml-order")], note="the first out-of-order element is reported")
put("fhir-xml/invalid/patient-value-on-complex.xml", "fhir.r4.Patient",
    swap(patient, "<maritalStatus>", '<maritalStatus value="S">'), [("/maritalStatus", "fhir-xml-attribute")])
put("fhir-xml/invalid/patient-id-as-element.xml", "fhir.r4.Patient",
    swap(patient, "  <identifier>\n", '  <identifier>\n    <id value="nhs"/>\n'), [("/identifier/0/id", "fhir-xml-attribute")])
put("fhir-xml/invalid/patient-narrative-div-in-fhir-namespace.xml", "fhir.r4.Patient",
    swap(patient, "  <identifier>\n", '  <text>\n    <status value="generated"/>\n    <div>John Smith</div>\n  </text>\n  <identifier>\n'),
    [("/text/div", "fhir-xml-namespace")], note="reported once: not also fhir-required for Narrative.div")
put("fhir-xml/invalid/patient-active-yes.xml", "fhir.r4.Patient",
    swap(patient, '<active value="true"/>', '<active value="yes"/>'), [("/active", "fhir-format")])
put("fhir-xml/invalid/servicerequest-contained-empty.xml", "fhir.r4.ServiceRequest",
    swap(referral, "  <identifier>\n", "  <contained/>\n  <identifier>\n"), [("/contained/0", "fhir-xml-resource")])
put("fhir-xml/invalid/servicerequest-contained-two-resources.xml", "fhir.r4.ServiceRequest",
    swap(referral, "  <identifier>\n", '  <contained>\n    <Patient><id value="a"/></Patient>\n    <Patient><id value="b"/></Patient>\n  </contained>\n  <identifier>\n'),
    [("/contained/0", "fhir-xml-resource"), ("/contained/0", "fhir-invariant")],
    note="the Patient read is referenced by nothing (dom-3)")
put("fhir-xml/invalid/servicerequest-json-body.xml", "fhir.r4.ServiceRequest",
    (REPO / "examples" / "referral.json").read_text(), [("", "xml-syntax")], note="JSON sent as application/fhir+xml")
put("fhir-xml/invalid/patient-truncated.xml", "fhir.r4.Patient", patient[:700], [("", "xml-syntax")])
put("fhir-xml/invalid/patient-undeclared-entity.xml", "fhir.r4.Patient",
    swap(patient, '<family value="Smith"/>', '<family value="&xxe;"/>'), [("", "xml-syntax")])
put("fhir-xml/invalid/patient-billion-laughs.xml", "fhir.r4.Patient",
    '<?xml version="1.0"?>\n<!DOCTYPE Patient [\n  <!ENTITY lol "lol">\n'
    + "".join(f'  <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10))
    + ']>\n<Patient xmlns="http://hl7.org/fhir"><id value="x"/><gender value="&lol9;"/></Patient>\n',
    [("", "xml-dtd")], note="entity expansion: refused before any entity is declared")
put("fhir-xml/invalid/patient-xxe-file.xml", "fhir.r4.Patient",
    '<?xml version="1.0"?>\n<!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    '<Patient xmlns="http://hl7.org/fhir"><id value="&xxe;"/></Patient>\n', [("", "xml-dtd")])
put("fhir-xml/invalid/patient-external-dtd.xml", "fhir.r4.Patient",
    '<?xml version="1.0"?>\n<!DOCTYPE Patient SYSTEM "http://127.0.0.1:9/evil.dtd">\n'
    '<Patient xmlns="http://hl7.org/fhir"><id value="x"/></Patient>\n', [("", "xml-dtd")])
put("fhir-xml/invalid/patient-billion-laughs-utf16.xml", "fhir.r4.Patient",
    (ROOT / "fhir-xml/invalid/patient-billion-laughs.xml").read_text().replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16"),
    [("", "xml-dtd")], note="UTF-16 hides <!DOCTYPE from a byte search: the parser refuses it itself")

write_manifest(ROOT / "xml-manifest.toml",
               ["# Generated by make_xml_corpus.py: FHIR XML cases (sent as application/fhir+xml), the exact (path, rule)",
                "# violations, and for XML twins of JSON corpus cases the JSON file (same violations expected)."],
               CASES, ("json", "note"))
print(f"{len(CASES)} cases")
