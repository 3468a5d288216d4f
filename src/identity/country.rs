//! Country normalization: ISO 3166-1 alpha-2 from an alpha-2 code, an alpha-3 code or an English name.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::text::{clean, fold};
use super::{Reason, EMPTY};
use crate::platform::Platform;

/// Reason for a value that is no known country.
const UNKNOWN: Reason = "unknown country";

/// ISO 3166-1: alpha-2, alpha-3, then English names separated by `|` (the ISO short name first, then
/// common names such as "UK" or "Ivory Coast").
const COUNTRIES: &[(&str, &str, &str)] = &[
    ("AD", "AND", "Andorra"),
    ("AE", "ARE", "United Arab Emirates|UAE"),
    ("AF", "AFG", "Afghanistan"),
    ("AG", "ATG", "Antigua and Barbuda"),
    ("AI", "AIA", "Anguilla"),
    ("AL", "ALB", "Albania"),
    ("AM", "ARM", "Armenia"),
    ("AO", "AGO", "Angola"),
    ("AQ", "ATA", "Antarctica"),
    ("AR", "ARG", "Argentina"),
    ("AS", "ASM", "American Samoa"),
    ("AT", "AUT", "Austria"),
    ("AU", "AUS", "Australia"),
    ("AW", "ABW", "Aruba"),
    ("AX", "ALA", "Åland Islands"),
    ("AZ", "AZE", "Azerbaijan"),
    ("BA", "BIH", "Bosnia and Herzegovina"),
    ("BB", "BRB", "Barbados"),
    ("BD", "BGD", "Bangladesh"),
    ("BE", "BEL", "Belgium"),
    ("BF", "BFA", "Burkina Faso"),
    ("BG", "BGR", "Bulgaria"),
    ("BH", "BHR", "Bahrain"),
    ("BI", "BDI", "Burundi"),
    ("BJ", "BEN", "Benin"),
    ("BL", "BLM", "Saint Barthélemy"),
    ("BM", "BMU", "Bermuda"),
    ("BN", "BRN", "Brunei Darussalam|Brunei"),
    ("BO", "BOL", "Bolivia (Plurinational State of)|Bolivia"),
    ("BQ", "BES", "Bonaire, Sint Eustatius and Saba|Caribbean Netherlands"),
    ("BR", "BRA", "Brazil"),
    ("BS", "BHS", "Bahamas|The Bahamas"),
    ("BT", "BTN", "Bhutan"),
    ("BV", "BVT", "Bouvet Island"),
    ("BW", "BWA", "Botswana"),
    ("BY", "BLR", "Belarus"),
    ("BZ", "BLZ", "Belize"),
    ("CA", "CAN", "Canada"),
    ("CC", "CCK", "Cocos (Keeling) Islands|Cocos Islands"),
    ("CD", "COD", "Congo, Democratic Republic of the|Democratic Republic of the Congo|DR Congo"),
    ("CF", "CAF", "Central African Republic"),
    ("CG", "COG", "Congo|Republic of the Congo"),
    ("CH", "CHE", "Switzerland"),
    ("CI", "CIV", "Côte d'Ivoire|Ivory Coast"),
    ("CK", "COK", "Cook Islands"),
    ("CL", "CHL", "Chile"),
    ("CM", "CMR", "Cameroon"),
    ("CN", "CHN", "China"),
    ("CO", "COL", "Colombia"),
    ("CR", "CRI", "Costa Rica"),
    ("CU", "CUB", "Cuba"),
    ("CV", "CPV", "Cabo Verde|Cape Verde"),
    ("CW", "CUW", "Curaçao"),
    ("CX", "CXR", "Christmas Island"),
    ("CY", "CYP", "Cyprus"),
    ("CZ", "CZE", "Czechia|Czech Republic"),
    ("DE", "DEU", "Germany"),
    ("DJ", "DJI", "Djibouti"),
    ("DK", "DNK", "Denmark"),
    ("DM", "DMA", "Dominica"),
    ("DO", "DOM", "Dominican Republic"),
    ("DZ", "DZA", "Algeria"),
    ("EC", "ECU", "Ecuador"),
    ("EE", "EST", "Estonia"),
    ("EG", "EGY", "Egypt"),
    ("EH", "ESH", "Western Sahara"),
    ("ER", "ERI", "Eritrea"),
    ("ES", "ESP", "Spain"),
    ("ET", "ETH", "Ethiopia"),
    ("FI", "FIN", "Finland"),
    ("FJ", "FJI", "Fiji"),
    ("FK", "FLK", "Falkland Islands (Malvinas)|Falkland Islands"),
    ("FM", "FSM", "Micronesia (Federated States of)|Micronesia"),
    ("FO", "FRO", "Faroe Islands"),
    ("FR", "FRA", "France"),
    ("GA", "GAB", "Gabon"),
    ("GB", "GBR", "United Kingdom of Great Britain and Northern Ireland|United Kingdom|UK|Great Britain|Britain|England|Scotland|Wales|Northern Ireland"),
    ("GD", "GRD", "Grenada"),
    ("GE", "GEO", "Georgia"),
    ("GF", "GUF", "French Guiana"),
    ("GG", "GGY", "Guernsey"),
    ("GH", "GHA", "Ghana"),
    ("GI", "GIB", "Gibraltar"),
    ("GL", "GRL", "Greenland"),
    ("GM", "GMB", "Gambia|The Gambia"),
    ("GN", "GIN", "Guinea"),
    ("GP", "GLP", "Guadeloupe"),
    ("GQ", "GNQ", "Equatorial Guinea"),
    ("GR", "GRC", "Greece"),
    ("GS", "SGS", "South Georgia and the South Sandwich Islands"),
    ("GT", "GTM", "Guatemala"),
    ("GU", "GUM", "Guam"),
    ("GW", "GNB", "Guinea-Bissau"),
    ("GY", "GUY", "Guyana"),
    ("HK", "HKG", "Hong Kong"),
    ("HM", "HMD", "Heard Island and McDonald Islands"),
    ("HN", "HND", "Honduras"),
    ("HR", "HRV", "Croatia"),
    ("HT", "HTI", "Haiti"),
    ("HU", "HUN", "Hungary"),
    ("ID", "IDN", "Indonesia"),
    ("IE", "IRL", "Ireland"),
    ("IL", "ISR", "Israel"),
    ("IM", "IMN", "Isle of Man"),
    ("IN", "IND", "India"),
    ("IO", "IOT", "British Indian Ocean Territory"),
    ("IQ", "IRQ", "Iraq"),
    ("IR", "IRN", "Iran (Islamic Republic of)|Iran"),
    ("IS", "ISL", "Iceland"),
    ("IT", "ITA", "Italy"),
    ("JE", "JEY", "Jersey"),
    ("JM", "JAM", "Jamaica"),
    ("JO", "JOR", "Jordan"),
    ("JP", "JPN", "Japan"),
    ("KE", "KEN", "Kenya"),
    ("KG", "KGZ", "Kyrgyzstan"),
    ("KH", "KHM", "Cambodia"),
    ("KI", "KIR", "Kiribati"),
    ("KM", "COM", "Comoros"),
    ("KN", "KNA", "Saint Kitts and Nevis"),
    ("KP", "PRK", "Korea (Democratic People's Republic of)|North Korea"),
    ("KR", "KOR", "Korea, Republic of|Republic of Korea|South Korea"),
    ("KW", "KWT", "Kuwait"),
    ("KY", "CYM", "Cayman Islands"),
    ("KZ", "KAZ", "Kazakhstan"),
    ("LA", "LAO", "Lao People's Democratic Republic|Laos"),
    ("LB", "LBN", "Lebanon"),
    ("LC", "LCA", "Saint Lucia"),
    ("LI", "LIE", "Liechtenstein"),
    ("LK", "LKA", "Sri Lanka"),
    ("LR", "LBR", "Liberia"),
    ("LS", "LSO", "Lesotho"),
    ("LT", "LTU", "Lithuania"),
    ("LU", "LUX", "Luxembourg"),
    ("LV", "LVA", "Latvia"),
    ("LY", "LBY", "Libya"),
    ("MA", "MAR", "Morocco"),
    ("MC", "MCO", "Monaco"),
    ("MD", "MDA", "Moldova, Republic of|Moldova"),
    ("ME", "MNE", "Montenegro"),
    ("MF", "MAF", "Saint Martin (French part)|Saint Martin"),
    ("MG", "MDG", "Madagascar"),
    ("MH", "MHL", "Marshall Islands"),
    ("MK", "MKD", "North Macedonia|Macedonia"),
    ("ML", "MLI", "Mali"),
    ("MM", "MMR", "Myanmar|Burma"),
    ("MN", "MNG", "Mongolia"),
    ("MO", "MAC", "Macao|Macau"),
    ("MP", "MNP", "Northern Mariana Islands"),
    ("MQ", "MTQ", "Martinique"),
    ("MR", "MRT", "Mauritania"),
    ("MS", "MSR", "Montserrat"),
    ("MT", "MLT", "Malta"),
    ("MU", "MUS", "Mauritius"),
    ("MV", "MDV", "Maldives"),
    ("MW", "MWI", "Malawi"),
    ("MX", "MEX", "Mexico"),
    ("MY", "MYS", "Malaysia"),
    ("MZ", "MOZ", "Mozambique"),
    ("NA", "NAM", "Namibia"),
    ("NC", "NCL", "New Caledonia"),
    ("NE", "NER", "Niger"),
    ("NF", "NFK", "Norfolk Island"),
    ("NG", "NGA", "Nigeria"),
    ("NI", "NIC", "Nicaragua"),
    ("NL", "NLD", "Netherlands (Kingdom of the)|Netherlands|The Netherlands|Holland"),
    ("NO", "NOR", "Norway"),
    ("NP", "NPL", "Nepal"),
    ("NR", "NRU", "Nauru"),
    ("NU", "NIU", "Niue"),
    ("NZ", "NZL", "New Zealand"),
    ("OM", "OMN", "Oman"),
    ("PA", "PAN", "Panama"),
    ("PE", "PER", "Peru"),
    ("PF", "PYF", "French Polynesia"),
    ("PG", "PNG", "Papua New Guinea"),
    ("PH", "PHL", "Philippines"),
    ("PK", "PAK", "Pakistan"),
    ("PL", "POL", "Poland"),
    ("PM", "SPM", "Saint Pierre and Miquelon"),
    ("PN", "PCN", "Pitcairn|Pitcairn Islands"),
    ("PR", "PRI", "Puerto Rico"),
    ("PS", "PSE", "Palestine, State of|Palestine"),
    ("PT", "PRT", "Portugal"),
    ("PW", "PLW", "Palau"),
    ("PY", "PRY", "Paraguay"),
    ("QA", "QAT", "Qatar"),
    ("RE", "REU", "Réunion"),
    ("RO", "ROU", "Romania"),
    ("RS", "SRB", "Serbia"),
    ("RU", "RUS", "Russian Federation|Russia"),
    ("RW", "RWA", "Rwanda"),
    ("SA", "SAU", "Saudi Arabia"),
    ("SB", "SLB", "Solomon Islands"),
    ("SC", "SYC", "Seychelles"),
    ("SD", "SDN", "Sudan"),
    ("SE", "SWE", "Sweden"),
    ("SG", "SGP", "Singapore"),
    ("SH", "SHN", "Saint Helena, Ascension and Tristan da Cunha|Saint Helena"),
    ("SI", "SVN", "Slovenia"),
    ("SJ", "SJM", "Svalbard and Jan Mayen"),
    ("SK", "SVK", "Slovakia"),
    ("SL", "SLE", "Sierra Leone"),
    ("SM", "SMR", "San Marino"),
    ("SN", "SEN", "Senegal"),
    ("SO", "SOM", "Somalia"),
    ("SR", "SUR", "Suriname"),
    ("SS", "SSD", "South Sudan"),
    ("ST", "STP", "Sao Tome and Principe"),
    ("SV", "SLV", "El Salvador"),
    ("SX", "SXM", "Sint Maarten (Dutch part)|Sint Maarten"),
    ("SY", "SYR", "Syrian Arab Republic|Syria"),
    ("SZ", "SWZ", "Eswatini|Swaziland"),
    ("TC", "TCA", "Turks and Caicos Islands"),
    ("TD", "TCD", "Chad"),
    ("TF", "ATF", "French Southern Territories"),
    ("TG", "TGO", "Togo"),
    ("TH", "THA", "Thailand"),
    ("TJ", "TJK", "Tajikistan"),
    ("TK", "TKL", "Tokelau"),
    ("TL", "TLS", "Timor-Leste|East Timor"),
    ("TM", "TKM", "Turkmenistan"),
    ("TN", "TUN", "Tunisia"),
    ("TO", "TON", "Tonga"),
    ("TR", "TUR", "Türkiye|Turkey"),
    ("TT", "TTO", "Trinidad and Tobago"),
    ("TV", "TUV", "Tuvalu"),
    ("TW", "TWN", "Taiwan, Province of China|Taiwan"),
    ("TZ", "TZA", "Tanzania, United Republic of|Tanzania"),
    ("UA", "UKR", "Ukraine"),
    ("UG", "UGA", "Uganda"),
    ("UM", "UMI", "United States Minor Outlying Islands"),
    ("US", "USA", "United States of America|United States|America"),
    ("UY", "URY", "Uruguay"),
    ("UZ", "UZB", "Uzbekistan"),
    ("VA", "VAT", "Holy See|Vatican City|Vatican"),
    ("VC", "VCT", "Saint Vincent and the Grenadines"),
    ("VE", "VEN", "Venezuela (Bolivarian Republic of)|Venezuela"),
    ("VG", "VGB", "Virgin Islands (British)|British Virgin Islands"),
    ("VI", "VIR", "Virgin Islands (U.S.)|U.S. Virgin Islands"),
    ("VN", "VNM", "Viet Nam"),
    ("VU", "VUT", "Vanuatu"),
    ("WF", "WLF", "Wallis and Futuna"),
    ("WS", "WSM", "Samoa"),
    ("YE", "YEM", "Yemen"),
    ("YT", "MYT", "Mayotte"),
    ("ZA", "ZAF", "South Africa"),
    ("ZM", "ZMB", "Zambia"),
    ("ZW", "ZWE", "Zimbabwe"),
];

/// Every folded spelling (alpha-2, alpha-3, names) → uppercase alpha-2.
static BY_SPELLING: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let mut map = HashMap::new();
    for (alpha2, alpha3, names) in COUNTRIES {
        for spelling in [*alpha2, *alpha3].into_iter().chain(names.split('|')) {
            map.insert(fold(spelling), *alpha2);
        }
    }
    map
});

/// The uppercase ISO alpha-2 code of a country given as alpha-2, alpha-3 or English name (any case,
/// accents and punctuation ignored: `U.K.` → `GB`, `usa` → `US`); `None` for anything else.
pub fn country_code(raw: &str) -> Option<&'static str> {
    BY_SPELLING.get(&fold(raw)).copied()
}

/// Normalizes a country, or says why it is left out.
pub(crate) fn country_checked(platform: Platform, raw: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    let code = country_code(&cleaned).ok_or(UNKNOWN)?;
    // Google's region code is uppercase; every other platform hashes the lowercase code, as Meta.
    Ok(if platform.is_google() {
        code.to_owned()
    } else {
        code.to_ascii_lowercase()
    })
}

/// Normalizes a country to ISO alpha-2: lowercase for Meta and TikTok (`United States` → `us`),
/// uppercase for Google (`US`); `None` when it is not a known country.
pub fn normalize_country(platform: Platform, raw: &str) -> Option<String> {
    country_checked(platform, raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_iso_country_once_and_no_spelling_twice() {
        assert_eq!(COUNTRIES.len(), 249);
        let mut seen = HashMap::new();
        for (alpha2, alpha3, names) in COUNTRIES {
            assert_eq!(alpha2.len(), 2);
            assert_eq!(alpha3.len(), 3);
            for spelling in [*alpha2, *alpha3].into_iter().chain(names.split('|')) {
                let previous = seen.insert(fold(spelling), *alpha2);
                assert!(previous.is_none(), "{spelling} is listed twice");
            }
        }
    }

    #[test]
    fn published_examples_map_to_alpha2() {
        for raw in ["United States", "usa", "US", "us", "U.S.A.", "U.S."] {
            assert_eq!(
                normalize_country(Platform::Meta, raw).as_deref(),
                Some("us"),
                "{raw}"
            );
            assert_eq!(
                normalize_country(Platform::GoogleAds, raw).as_deref(),
                Some("US"),
                "{raw}"
            );
        }
        for raw in ["UK", "U.K.", "United Kingdom", "GBR", "gb"] {
            assert_eq!(
                normalize_country(Platform::Meta, raw).as_deref(),
                Some("gb"),
                "{raw}"
            );
        }
    }

    #[test]
    fn names_with_accents_or_ampersands_are_found() {
        assert_eq!(country_code("Cote d'Ivoire"), Some("CI"));
        assert_eq!(country_code("CÔTE D’IVOIRE"), Some("CI"));
        assert_eq!(country_code("Bosnia & Herzegovina"), Some("BA"));
        assert_eq!(country_code("Turkey"), Some("TR"));
        assert_eq!(country_code("türkiye"), Some("TR"));
    }

    #[test]
    fn unknown_countries_are_left_out() {
        for raw in ["Atlantis", "XX", "ZZZ", "N.Y.", "12"] {
            assert_eq!(country_checked(Platform::Meta, raw), Err(UNKNOWN), "{raw}");
        }
        assert_eq!(country_checked(Platform::Meta, " "), Err(EMPTY));
    }
}
