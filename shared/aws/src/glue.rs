//! The Glue Data Catalog adapter: registers and removes the partitions of the bronze tables' Glue tables, the
//! free equivalent of `MSCK REPAIR TABLE` / `ALTER TABLE ADD PARTITION` (no Athena query to pay for or wait on).

use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{PartitionInput, PartitionValueList, StorageDescriptor};
use tracing::{info, instrument};

/// Most partitions `BatchCreatePartition` takes per call.
const CREATE_CHUNK: usize = 100;
/// Most partitions `BatchDeletePartition` takes per call.
const DELETE_CHUNK: usize = 25;

/// A Glue call failed (after the SDK's retries), or answered with errors other than "already so".
#[derive(Debug, thiserror::Error)]
#[error("Glue {op} {database}.{table}: {message}")]
pub struct CatalogError {
    /// The operation.
    pub op: &'static str,
    /// Database.
    pub database: String,
    /// Table.
    pub table: String,
    /// What went wrong (the SDK error with its whole context chain, or Glue's per-partition answers).
    pub message: String,
    /// The SDK error, when a call failed (not when Glue answered with per-partition errors).
    #[source]
    pub source: Option<Box<aws_sdk_glue::Error>>,
}

/// One Glue database of the lake.
#[derive(Debug, Clone)]
pub struct Catalog {
    client: aws_sdk_glue::Client,
    database: String,
}

impl Catalog {
    /// A catalog adapter for `database`.
    pub fn new(client: aws_sdk_glue::Client, database: impl Into<String>) -> Self {
        Self { client, database: database.into() }
    }

    fn error(&self, op: &'static str, table: &str, message: impl Into<String>) -> CatalogError {
        CatalogError {
            op,
            database: self.database.clone(),
            table: table.to_owned(),
            message: message.into(),
            source: None,
        }
    }

    /// A failed call, keeping the SDK error as the cause.
    fn failed<E>(&self, op: &'static str, table: &str, e: E) -> CatalogError
    where
        E: Into<aws_sdk_glue::Error> + std::error::Error + Send + Sync + 'static,
    {
        let message = DisplayErrorContext(&e).to_string();
        CatalogError { source: Some(Box::new(e.into())), ..self.error(op, table, message) }
    }

    /// The table's storage descriptor: the template for its partitions'.
    #[instrument(skip(self))]
    pub async fn storage_descriptor(&self, table: &str) -> Result<StorageDescriptor, CatalogError> {
        let out = self
            .client
            .get_table()
            .database_name(&self.database)
            .name(table)
            .send()
            .await
            .map_err(|e| self.failed("GetTable", table, e))?;
        out.table()
            .and_then(|t| t.storage_descriptor())
            .cloned()
            .ok_or_else(|| self.error("GetTable", table, "the table has no storage descriptor"))
    }

    /// Registers partitions (values, location), each with a copy of `template` pointing at its location. A
    /// partition that exists already counts as done. Returns how many were created.
    #[instrument(skip(self, template, partitions), fields(partitions = partitions.len()))]
    pub async fn create_partitions(
        &self,
        table: &str,
        template: &StorageDescriptor,
        partitions: &[(Vec<String>, String)],
    ) -> Result<usize, CatalogError> {
        let mut created = 0;
        for chunk in partitions.chunks(CREATE_CHUNK) {
            let inputs: Vec<PartitionInput> = chunk
                .iter()
                .map(|(values, location)| {
                    let mut sd = template.clone();
                    sd.location = Some(location.clone());
                    PartitionInput::builder().set_values(Some(values.clone())).storage_descriptor(sd).build()
                })
                .collect();
            let out = self
                .client
                .batch_create_partition()
                .database_name(&self.database)
                .table_name(table)
                .set_partition_input_list(Some(inputs))
                .send()
                .await
                .map_err(|e| self.failed("BatchCreatePartition", table, e))?;
            let errors: Vec<String> = out
                .errors()
                .iter()
                .filter_map(|e| {
                    let detail = e.error_detail()?;
                    (detail.error_code() != Some("AlreadyExistsException")).then(|| {
                        format!(
                            "{:?}: {} {}",
                            e.partition_values(),
                            detail.error_code().unwrap_or("?"),
                            detail.error_message().unwrap_or("")
                        )
                    })
                })
                .collect();
            if !errors.is_empty() {
                return Err(self.error("BatchCreatePartition", table, errors.join("; ")));
            }
            let existing = out.errors().len();
            created += chunk.len() - existing;
            info!(table, asked = chunk.len(), existing, "partitions registered");
        }
        Ok(created)
    }

    /// Removes partitions by values; one that is gone already counts as done. Returns how many were asked.
    #[instrument(skip(self, partitions), fields(partitions = partitions.len()))]
    pub async fn delete_partitions(&self, table: &str, partitions: &[Vec<String>]) -> Result<usize, CatalogError> {
        for chunk in partitions.chunks(DELETE_CHUNK) {
            let list: Vec<PartitionValueList> = chunk
                .iter()
                .filter_map(|values| PartitionValueList::builder().set_values(Some(values.clone())).build().ok())
                .collect();
            let out = self
                .client
                .batch_delete_partition()
                .database_name(&self.database)
                .table_name(table)
                .set_partitions_to_delete(Some(list))
                .send()
                .await
                .map_err(|e| self.failed("BatchDeletePartition", table, e))?;
            let errors: Vec<String> = out
                .errors()
                .iter()
                .filter_map(|e| {
                    let detail = e.error_detail()?;
                    (detail.error_code() != Some("EntityNotFoundException"))
                        .then(|| format!("{:?}: {}", e.partition_values(), detail.error_code().unwrap_or("?")))
                })
                .collect();
            if !errors.is_empty() {
                return Err(self.error("BatchDeletePartition", table, errors.join("; ")));
            }
        }
        Ok(partitions.len())
    }
}
