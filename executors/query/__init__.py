"""Query and retrieve: pull the studies of accession numbers from a source (a PACS over DICOM,
a DICOMweb server, or a local folder) into Talaria through the ordinary intake.

Failures reuse the dispatch errors (a source is a target whose direction is `query` or
`both`): `TargetUnavailable` is transient and retried with backoff, `TargetRefused` and
`TargetMisconfigured` are permanent for the accession.
"""
