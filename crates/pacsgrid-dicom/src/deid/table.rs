//! The attributes of PS3.15 Table E.1-1 that the Basic Application Level Confidentiality
//! Profile removes or empties, as this node applies it with the Retain UIDs and Retain
//! Longitudinal Temporal Information with Modified Dates options.
//!
//! Attributes with action U (UIDs) are kept by the Retain UIDs option and are not listed;
//! dates and date-times not listed here are shifted (see [`super::dates`]). Where the table
//! offers several actions (X/Z/D), the one chosen is the one that keeps the least: Remove
//! where the attribute is optional in practice, Empty where IODs make it Type 2.

use dicom_core::Tag;

/// What the profile does with one attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// X: the attribute is removed.
    Remove,
    /// Z: the attribute is kept with an empty value.
    Empty,
    /// D for PatientName: replaced by the patient's pseudonym.
    PatientName,
    /// D for PatientID: replaced by the patient's pseudonym.
    PatientId,
}

use Action::{Empty as Z, PatientId as PID, PatientName as PNAME, Remove as X};

/// The table: tag, action, keyword (the keyword is checked against the dictionary in tests,
/// so a wrong tag cannot hide behind a right name).
pub(crate) static TABLE: &[(Tag, Action, &str)] = &[
    (Tag(0x0008, 0x0050), Z, "AccessionNumber"),
    (Tag(0x0008, 0x0051), X, "IssuerOfAccessionNumberSequence"),
    (Tag(0x0008, 0x0055), X, "StationAETitle"),
    (Tag(0x0008, 0x0080), X, "InstitutionName"),
    (Tag(0x0008, 0x0081), X, "InstitutionAddress"),
    (Tag(0x0008, 0x0082), X, "InstitutionCodeSequence"),
    (Tag(0x0008, 0x0090), Z, "ReferringPhysicianName"),
    (Tag(0x0008, 0x0092), X, "ReferringPhysicianAddress"),
    (Tag(0x0008, 0x0094), X, "ReferringPhysicianTelephoneNumbers"),
    (
        Tag(0x0008, 0x0096),
        X,
        "ReferringPhysicianIdentificationSequence",
    ),
    (Tag(0x0008, 0x009C), X, "ConsultingPhysicianName"),
    (
        Tag(0x0008, 0x009D),
        X,
        "ConsultingPhysicianIdentificationSequence",
    ),
    (Tag(0x0008, 0x0201), X, "TimezoneOffsetFromUTC"),
    (Tag(0x0008, 0x1010), X, "StationName"),
    (Tag(0x0008, 0x1030), X, "StudyDescription"),
    (Tag(0x0008, 0x103E), X, "SeriesDescription"),
    (Tag(0x0008, 0x1040), X, "InstitutionalDepartmentName"),
    (
        Tag(0x0008, 0x1041),
        X,
        "InstitutionalDepartmentTypeCodeSequence",
    ),
    (Tag(0x0008, 0x1048), X, "PhysiciansOfRecord"),
    (
        Tag(0x0008, 0x1049),
        X,
        "PhysiciansOfRecordIdentificationSequence",
    ),
    (Tag(0x0008, 0x1050), X, "PerformingPhysicianName"),
    (
        Tag(0x0008, 0x1052),
        X,
        "PerformingPhysicianIdentificationSequence",
    ),
    (Tag(0x0008, 0x1060), X, "NameOfPhysiciansReadingStudy"),
    (
        Tag(0x0008, 0x1062),
        X,
        "PhysiciansReadingStudyIdentificationSequence",
    ),
    (Tag(0x0008, 0x1070), X, "OperatorsName"),
    (Tag(0x0008, 0x1072), X, "OperatorIdentificationSequence"),
    (Tag(0x0008, 0x1080), X, "AdmittingDiagnosesDescription"),
    (Tag(0x0008, 0x1084), X, "AdmittingDiagnosesCodeSequence"),
    (Tag(0x0008, 0x1110), X, "ReferencedStudySequence"),
    (
        Tag(0x0008, 0x1111),
        X,
        "ReferencedPerformedProcedureStepSequence",
    ),
    (Tag(0x0008, 0x1120), X, "ReferencedPatientSequence"),
    (Tag(0x0008, 0x2111), X, "DerivationDescription"),
    (Tag(0x0008, 0x4000), X, "IdentifyingComments"),
    (Tag(0x0010, 0x0010), PNAME, "PatientName"),
    (Tag(0x0010, 0x0020), PID, "PatientID"),
    (Tag(0x0010, 0x0021), X, "IssuerOfPatientID"),
    (
        Tag(0x0010, 0x0024),
        X,
        "IssuerOfPatientIDQualifiersSequence",
    ),
    (Tag(0x0010, 0x0030), Z, "PatientBirthDate"),
    (Tag(0x0010, 0x0032), X, "PatientBirthTime"),
    (
        Tag(0x0010, 0x0033),
        X,
        "PatientBirthDateInAlternativeCalendar",
    ),
    (
        Tag(0x0010, 0x0034),
        X,
        "PatientDeathDateInAlternativeCalendar",
    ),
    (Tag(0x0010, 0x0035), X, "PatientAlternativeCalendar"),
    (Tag(0x0010, 0x0040), Z, "PatientSex"),
    (Tag(0x0010, 0x0050), X, "PatientInsurancePlanCodeSequence"),
    (Tag(0x0010, 0x0101), X, "PatientPrimaryLanguageCodeSequence"),
    (
        Tag(0x0010, 0x0102),
        X,
        "PatientPrimaryLanguageModifierCodeSequence",
    ),
    (Tag(0x0010, 0x1000), X, "OtherPatientIDs"),
    (Tag(0x0010, 0x1001), X, "OtherPatientNames"),
    (Tag(0x0010, 0x1002), X, "OtherPatientIDsSequence"),
    (Tag(0x0010, 0x1005), X, "PatientBirthName"),
    (Tag(0x0010, 0x1010), X, "PatientAge"),
    (Tag(0x0010, 0x1020), X, "PatientSize"),
    (Tag(0x0010, 0x1030), X, "PatientWeight"),
    (Tag(0x0010, 0x1040), X, "PatientAddress"),
    (Tag(0x0010, 0x1060), X, "PatientMotherBirthName"),
    (Tag(0x0010, 0x1080), X, "MilitaryRank"),
    (Tag(0x0010, 0x1081), X, "BranchOfService"),
    (Tag(0x0010, 0x1090), X, "MedicalRecordLocator"),
    (Tag(0x0010, 0x2000), X, "MedicalAlerts"),
    (Tag(0x0010, 0x2110), X, "Allergies"),
    (Tag(0x0010, 0x2150), X, "CountryOfResidence"),
    (Tag(0x0010, 0x2152), X, "RegionOfResidence"),
    (Tag(0x0010, 0x2154), X, "PatientTelephoneNumbers"),
    (Tag(0x0010, 0x2155), X, "PatientTelecomInformation"),
    (Tag(0x0010, 0x2160), X, "EthnicGroup"),
    (Tag(0x0010, 0x2180), X, "Occupation"),
    (Tag(0x0010, 0x21A0), X, "SmokingStatus"),
    (Tag(0x0010, 0x21B0), X, "AdditionalPatientHistory"),
    (Tag(0x0010, 0x21C0), X, "PregnancyStatus"),
    (Tag(0x0010, 0x21D0), X, "LastMenstrualDate"),
    (Tag(0x0010, 0x21F0), X, "PatientReligiousPreference"),
    (Tag(0x0010, 0x2203), X, "PatientSexNeutered"),
    (Tag(0x0010, 0x2297), X, "ResponsiblePerson"),
    (Tag(0x0010, 0x2298), X, "ResponsiblePersonRole"),
    (Tag(0x0010, 0x2299), X, "ResponsibleOrganization"),
    (Tag(0x0010, 0x4000), X, "PatientComments"),
    (Tag(0x0018, 0x1000), X, "DeviceSerialNumber"),
    (Tag(0x0018, 0x1004), X, "PlateID"),
    (Tag(0x0018, 0x1005), X, "GeneratorID"),
    (Tag(0x0018, 0x1007), X, "CassetteID"),
    (Tag(0x0018, 0x1008), X, "GantryID"),
    (Tag(0x0018, 0x1030), X, "ProtocolName"),
    (
        Tag(0x0018, 0x1400),
        X,
        "AcquisitionDeviceProcessingDescription",
    ),
    (Tag(0x0018, 0x4000), X, "AcquisitionComments"),
    (Tag(0x0018, 0x700A), X, "DetectorID"),
    (Tag(0x0018, 0x9424), X, "AcquisitionProtocolDescription"),
    (Tag(0x0020, 0x0010), Z, "StudyID"),
    (Tag(0x0020, 0x4000), X, "ImageComments"),
    (Tag(0x0020, 0x9158), X, "FrameComments"),
    (Tag(0x0032, 0x1032), X, "RequestingPhysician"),
    (Tag(0x0032, 0x1033), X, "RequestingService"),
    (Tag(0x0032, 0x1060), X, "RequestedProcedureDescription"),
    (Tag(0x0032, 0x1070), X, "RequestedContrastAgent"),
    (Tag(0x0032, 0x4000), X, "StudyComments"),
    (Tag(0x0038, 0x0004), X, "ReferencedPatientAliasSequence"),
    (Tag(0x0038, 0x0010), X, "AdmissionID"),
    (Tag(0x0038, 0x0011), X, "IssuerOfAdmissionID"),
    (Tag(0x0038, 0x0020), X, "AdmittingDate"),
    (Tag(0x0038, 0x0021), X, "AdmittingTime"),
    (Tag(0x0038, 0x0040), X, "DischargeDiagnosisDescription"),
    (Tag(0x0038, 0x0050), X, "SpecialNeeds"),
    (Tag(0x0038, 0x0060), X, "ServiceEpisodeID"),
    (Tag(0x0038, 0x0062), X, "ServiceEpisodeDescription"),
    (Tag(0x0038, 0x0300), X, "CurrentPatientLocation"),
    (Tag(0x0038, 0x0400), X, "PatientInstitutionResidence"),
    (Tag(0x0038, 0x0500), X, "PatientState"),
    (Tag(0x0038, 0x4000), X, "VisitComments"),
    (Tag(0x0040, 0x0001), X, "ScheduledStationAETitle"),
    (Tag(0x0040, 0x0006), X, "ScheduledPerformingPhysicianName"),
    (Tag(0x0040, 0x0007), X, "ScheduledProcedureStepDescription"),
    (Tag(0x0040, 0x0009), X, "ScheduledProcedureStepID"),
    (
        Tag(0x0040, 0x000B),
        X,
        "ScheduledPerformingPhysicianIdentificationSequence",
    ),
    (Tag(0x0040, 0x0010), X, "ScheduledStationName"),
    (Tag(0x0040, 0x0011), X, "ScheduledProcedureStepLocation"),
    (Tag(0x0040, 0x0241), X, "PerformedStationAETitle"),
    (Tag(0x0040, 0x0242), X, "PerformedStationName"),
    (Tag(0x0040, 0x0243), X, "PerformedLocation"),
    (Tag(0x0040, 0x0253), X, "PerformedProcedureStepID"),
    (Tag(0x0040, 0x0254), X, "PerformedProcedureStepDescription"),
    (Tag(0x0040, 0x0275), X, "RequestAttributesSequence"),
    (
        Tag(0x0040, 0x0280),
        X,
        "CommentsOnThePerformedProcedureStep",
    ),
    (Tag(0x0040, 0x1001), X, "RequestedProcedureID"),
    (Tag(0x0040, 0x1004), X, "PatientTransportArrangements"),
    (Tag(0x0040, 0x1005), X, "RequestedProcedureLocation"),
    (Tag(0x0040, 0x1010), X, "NamesOfIntendedRecipientsOfResults"),
    (Tag(0x0040, 0x1101), X, "PersonIdentificationCodeSequence"),
    (Tag(0x0040, 0x1102), X, "PersonAddress"),
    (Tag(0x0040, 0x1103), X, "PersonTelephoneNumbers"),
    (Tag(0x0040, 0x1400), X, "RequestedProcedureComments"),
    (Tag(0x0040, 0x2001), X, "ReasonForTheImagingServiceRequest"),
    (Tag(0x0040, 0x2008), X, "OrderEnteredBy"),
    (Tag(0x0040, 0x2009), X, "OrderEntererLocation"),
    (Tag(0x0040, 0x2010), X, "OrderCallbackPhoneNumber"),
    (
        Tag(0x0040, 0x2016),
        Z,
        "PlacerOrderNumberImagingServiceRequest",
    ),
    (
        Tag(0x0040, 0x2017),
        Z,
        "FillerOrderNumberImagingServiceRequest",
    ),
    (Tag(0x0040, 0x2400), X, "ImagingServiceRequestComments"),
    (Tag(0x0040, 0x4035), X, "ActualHumanPerformersSequence"),
    (Tag(0x0040, 0x4036), X, "HumanPerformerOrganization"),
    (Tag(0x0040, 0x4037), X, "HumanPerformerName"),
    (Tag(0x0040, 0xA027), X, "VerifyingOrganization"),
    (Tag(0x0040, 0xA073), X, "VerifyingObserverSequence"),
    (Tag(0x0040, 0xA075), Z, "VerifyingObserverName"),
    (Tag(0x0040, 0xA078), X, "AuthorObserverSequence"),
    (Tag(0x0040, 0xA07A), X, "ParticipantSequence"),
    (Tag(0x0040, 0xA07C), X, "CustodialOrganizationSequence"),
    (Tag(0x0040, 0xA123), Z, "PersonName"),
    (Tag(0x0040, 0xA160), X, "TextValue"),
    (Tag(0x0070, 0x0001), X, "GraphicAnnotationSequence"),
    (Tag(0x0070, 0x0084), Z, "ContentCreatorName"),
    (
        Tag(0x0070, 0x0086),
        X,
        "ContentCreatorIdentificationCodeSequence",
    ),
    (Tag(0x0088, 0x0200), X, "IconImageSequence"),
    (Tag(0x2030, 0x0020), X, "TextString"),
    (Tag(0x300E, 0x0008), X, "ReviewerName"),
    (Tag(0x0400, 0x0550), X, "ModifiedAttributesSequence"),
    (Tag(0x0400, 0x0561), X, "OriginalAttributesSequence"),
    (Tag(0x4000, 0x0010), X, "Arbitrary"),
    (Tag(0x4000, 0x4000), X, "TextComments"),
    (Tag(0xFFFA, 0xFFFA), X, "DigitalSignaturesSequence"),
    (Tag(0xFFFC, 0xFFFC), X, "DataSetTrailingPadding"),
];

/// The table's action for `tag`, if it lists the tag.
pub fn action(tag: Tag) -> Option<Action> {
    TABLE.iter().find(|(t, _, _)| *t == tag).map(|(_, a, _)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    use dicom_dictionary_std::StandardDataDictionary;

    #[test]
    fn keywords_match_the_dictionary_and_tags_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for (tag, _, keyword) in TABLE {
            assert!(seen.insert(*tag), "{keyword} listed twice");
            let entry = StandardDataDictionary
                .by_tag(*tag)
                .unwrap_or_else(|| panic!("{keyword} {tag} is not in the dictionary"));
            assert_eq!(entry.alias(), *keyword, "{tag}");
        }
        assert!(TABLE.len() >= 100, "{}", TABLE.len());
    }
}
