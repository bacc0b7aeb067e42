//! The resource-usage model: an ONNX file run in-process by tract (pure Rust: the Lambda needs no native
//! library), checked against its feature contract when it is loaded.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use fleetlake_core::fault::Cause;
use fleetlake_core::features::Contract;

/// Why a model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not an ONNX model tract can read.
    #[error("model {name}: not a readable ONNX model: {message}")]
    Unreadable {
        /// Model name (from the contract).
        name: String,
        /// tract's message with its context.
        message: String,
        /// tract's error.
        #[source]
        source: Cause,
    },
    /// The model's inputs or outputs do not match the contract.
    #[error("model {name}: does not match its feature contract: {message}")]
    Contract {
        /// Model name.
        name: String,
        /// The difference.
        message: String,
    },
    /// Running the model failed.
    #[error("model {name}: inference failed: {message}")]
    Run {
        /// Model name.
        name: String,
        /// What failed (tract's message with its context).
        message: String,
        /// tract's error, when tract failed.
        #[source]
        source: Option<Cause>,
    },
}

/// A loaded model, ready to predict one value per feature row.
pub struct Model {
    plan: std::sync::Arc<TypedSimplePlan>,
    contract: Contract,
    version: String,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.contract.name).field("version", &self.version).finish()
    }
}

/// FNV-1a, 64 bits: a short, stable fingerprint of the model file for `model_version`.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl Model {
    /// Loads an ONNX model and checks it against `contract`: one input of `[batch, features]` (f32) and one output.
    pub fn load(bytes: &[u8], contract: Contract) -> Result<Model, ModelError> {
        let name = contract.name.clone();
        let unreadable =
            |e: TractError| ModelError::Unreadable { name: name.clone(), message: format!("{e:#}"), source: e.into() };
        let mismatch = |message: String| ModelError::Contract { name: name.clone(), message };
        let mut model = tract_onnx::onnx().model_for_read(&mut std::io::Cursor::new(bytes)).map_err(unreadable)?;
        let (inputs, outputs) =
            (model.input_outlets().map_err(unreadable)?.len(), model.output_outlets().map_err(unreadable)?.len());
        if inputs != 1 || outputs != 1 {
            return Err(mismatch(format!("{inputs} inputs and {outputs} outputs; the contract has one of each")));
        }
        let want = contract.features.len();
        let fact = model.input_fact(0).map_err(unreadable)?.clone();
        let dims: Vec<Option<usize>> =
            fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_usize().ok())).collect();
        match dims.as_slice() {
            [_, Some(n)] if *n == want => {}
            [_, Some(n)] => {
                return Err(mismatch(format!(
                    "input has {n} features, the contract {want} ({})",
                    feature_list(&contract)
                )))
            }
            other => return Err(mismatch(format!("input shape {other:?} is not [batch, {want}]"))),
        }
        if fact.datum_type.concretize().is_some_and(|t| t != f32::datum_type()) {
            return Err(mismatch(format!("input type {:?} is not f32", fact.datum_type)));
        }
        model.set_input_fact(0, f32::fact([1, want]).into()).map_err(unreadable)?;
        let plan = model.into_optimized().and_then(|m| m.into_runnable()).map_err(unreadable)?;
        let version = format!("{}-{:016x}", contract.name, fingerprint(bytes));
        Ok(Model { plan, contract, version })
    }

    /// `<name>-<fingerprint of the file>`: what `model_version` records.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// One prediction per row; each row has the contract's features in order.
    pub fn predict(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        let run_err = |message: String| ModelError::Run { name: self.contract.name.clone(), message, source: None };
        let tract_err = |e: TractError| ModelError::Run {
            name: self.contract.name.clone(),
            message: format!("{e:#}"),
            source: Some(e.into()),
        };
        let n = self.contract.features.len();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if row.len() != n {
                return Err(run_err(format!("a row of {} features, the contract has {n}", row.len())));
            }
            let input = Tensor::from_shape(&[1, n], row).map_err(tract_err)?;
            let result = self.plan.run(tvec!(input.into())).map_err(tract_err)?;
            let value = result[0]
                .to_plain_array_view::<f32>()
                .map_err(tract_err)?
                .iter()
                .next()
                .copied()
                .ok_or_else(|| run_err("empty output".into()))?;
            out.push(value);
        }
        Ok(out)
    }
}

fn feature_list(c: &Contract) -> String {
    c.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetlake_core::features::SHIPPED_CONTRACT;

    const MODEL: &[u8] = include_bytes!("../../../models/fuel-24h/model.onnx");

    #[test]
    fn the_shipped_model_answers_as_onnxruntime_does() {
        let expected: serde_json::Value =
            serde_json::from_str(include_str!("../../../models/fuel-24h/expected.json")).unwrap();
        let rows: Vec<Vec<f32>> = serde_json::from_value(expected["features"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(expected["predictions"].clone()).unwrap();
        let model = Model::load(MODEL, Contract::parse(SHIPPED_CONTRACT).unwrap()).unwrap();
        let got = model.predict(&rows).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "tract {g} vs onnxruntime {w}");
        }
        assert!(model.version().starts_with("fuel-24h-"));
    }

    #[test]
    fn a_model_that_does_not_match_its_contract_is_refused_at_load() {
        let mut c = Contract::parse(SHIPPED_CONTRACT).unwrap();
        c.features.pop();
        let err = Model::load(MODEL, c).unwrap_err().to_string();
        assert!(err.contains("input has 11 features, the contract 10"), "{err}");
        let err = Model::load(b"not a model", Contract::parse(SHIPPED_CONTRACT).unwrap()).unwrap_err().to_string();
        assert!(err.starts_with("model fuel-24h: not a readable ONNX model"), "{err}");
    }
}
