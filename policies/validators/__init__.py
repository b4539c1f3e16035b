"""One module per open standard; :mod:`policies.validation` is the façade the gateway calls.

``limits`` (size/depth/element count before parsing), ``fhir`` (FHIR R4 from the official
definitions + UK Core; its ``fhir_*`` modules hold the compiled definitions, the Bundle rules,
the fast and typed paths, the XML reader, the invariants), ``hl7v2`` (ER7 with hl7apy's
structures), ``cloudevents`` (1.0 structured JSON), ``jsonschema`` (2020-12 via jsonschema-rs,
Open Referral UK and custom types), ``common`` (JSON pointers, NHS number and ODS code checks).
"""
