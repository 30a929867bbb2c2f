//! The proof of concept's attachment: a CSV file with a header row, base64
//! encoded. Parsed by the gateway (to refuse bad input before storing it) and
//! by the agent (to run the automation once per row).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    #[error("attachment is not valid base64: {0}")]
    Base64(String),
    #[error("attachment is not UTF-8 text")]
    NotText,
    #[error("attachment is not a CSV file: {0}")]
    Csv(String),
    #[error("attachment CSV has no header row")]
    NoHeader,
    #[error("attachment CSV has a header but no data rows")]
    NoRows,
}

/// A CSV row as `{column: value}`, in header order.
pub type Row = Map<String, Value>;

/// Decodes and parses the whole attachment; every row must have as many
/// fields as the header.
pub fn parse(base64_csv: &str) -> Result<Vec<Row>, AttachmentError> {
    // Tolerate line breaks, as produced by `base64` without `-w0`.
    let compact: String = base64_csv.split_ascii_whitespace().collect();
    let bytes = STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| AttachmentError::Base64(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| AttachmentError::NotText)?;
    if text.contains('\0') {
        return Err(AttachmentError::NotText);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| AttachmentError::Csv(e.to_string()))?
        .clone();
    if headers.is_empty() || headers.iter().all(str::is_empty) {
        return Err(AttachmentError::NoHeader);
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| AttachmentError::Csv(e.to_string()))?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        let row: Row = headers
            .iter()
            .zip(record.iter())
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(AttachmentError::NoRows);
    }
    Ok(rows)
}

pub fn encode(csv_text: &str) -> String {
    STANDARD.encode(csv_text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_as_objects() {
        let rows = parse(&encode("name,email\nAna,ana@x.com\nBo, bo@x.com \n")).expect("valid");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["email"], "bo@x.com");
        assert_eq!(rows[0].keys().collect::<Vec<_>>(), ["name", "email"]);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(parse("%%%"), Err(AttachmentError::Base64(_))));
        assert_eq!(parse(&encode("name\n")), Err(AttachmentError::NoRows));
        assert!(matches!(
            parse(&encode("a,b\n1,2,3\n")),
            Err(AttachmentError::Csv(_))
        ));
        assert_eq!(
            parse(&base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x00])),
            Err(AttachmentError::NotText)
        );
        assert_eq!(parse(&encode("")), Err(AttachmentError::NoHeader));
    }

    #[test]
    fn accepts_wrapped_base64() {
        let wrapped = encode("a,b\n1,2\n").chars().collect::<Vec<_>>();
        let with_breaks: String = wrapped
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse(&with_breaks).expect("valid").len(), 1);
    }
}
