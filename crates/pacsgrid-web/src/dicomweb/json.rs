//! DICOM JSON (PS3.18 F.2) for index answers: one tag per key, VR from the dictionary.
