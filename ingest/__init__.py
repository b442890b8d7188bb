"""Intake: DICOM C-STORE/C-ECHO receiver and web upload; bytes to the blob store, then the event."""
