//! JSON Schema checks with readable errors (no remote `$ref` is fetched).

use serde_json::Value;
use std::fmt;
use std::sync::Arc;

use crate::field::FieldError;

/// A compiled JSON Schema (no remote `$ref` is ever fetched).
pub struct Schema(jsonschema::Validator);

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schema")
    }
}

/// Compiled schemas by the SHA-256 of their text: a task's schemas are
/// compiled once per process, not once per submission.
static COMPILED: std::sync::LazyLock<moka::sync::Cache<[u8; 32], Arc<Schema>>> =
    std::sync::LazyLock::new(|| moka::sync::Cache::new(1024));

impl Schema {
    /// `compile`, once per distinct schema (kept for the 1,024 most used).
    pub fn cached(schema: &Value) -> Result<Arc<Schema>, String> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(schema.to_string().as_bytes()).into();
        if let Some(compiled) = COMPILED.get(&key) {
            return Ok(compiled);
        }
        let compiled = Arc::new(Schema::compile(schema)?);
        COMPILED.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Compiles `schema`, or says why it is not a valid JSON Schema.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        jsonschema::validator_for(schema)
            .map(Schema)
            .map_err(|e| format!("not a valid JSON Schema: {e}"))
    }

    /// Every way `instance` fails the schema, as flowBuild reports them:
    /// the failing path and the message.
    pub fn errors(&self, instance: &Value) -> Vec<FieldError> {
        self.0
            .iter_errors(instance)
            .map(|e| {
                let path = e.instance_path().to_string();
                FieldError::new(
                    if path.is_empty() { "/".into() } else { path },
                    e.to_string(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_report_every_failure_with_its_path() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["cpf"],
            "properties": {"cpf": {"type": "string"}, "age": {"type": "integer", "minimum": 18}}
        }))
        .expect("schema");
        assert!(schema.errors(&json!({"cpf": "1"})).is_empty());
        let errors = schema.errors(&json!({"age": 3}));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.field == "/age"));
        assert!(Schema::compile(&json!({"type": 12})).is_err());
    }

    #[test]
    fn a_schema_is_compiled_once_and_shared() {
        let text = json!({"type": "object", "required": ["only_here_7f3a"]});
        let first = Schema::cached(&text).expect("schema");
        let again = Schema::cached(&text).expect("schema");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.errors(&json!({})).len(), 1);
        assert!(Schema::cached(&json!({"type": 12})).is_err());
    }
}
