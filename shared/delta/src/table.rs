//! Opening, creating and evolving a bronze table.

use super::*;

/// Opens an existing table at `url` (latest version); never creates one.
pub async fn open_existing(
    spec: &'static TableSpec,
    url: Url,
    storage_options: HashMap<String, String>,
) -> Result<DeltaTable, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    DeltaTableBuilder::from_url(url).map_err(err)?.with_storage_options(storage_options).load().await.map_err(err)
}

/// The Delta type of a column of this kind.
pub fn delta_type(kind: Kind) -> DataType {
    match kind {
        Kind::Utf8 => DataType::STRING,
        Kind::Float64 => DataType::DOUBLE,
        Kind::Int32 => DataType::INTEGER,
        Kind::Int64 => DataType::LONG,
        Kind::Timestamp | Kind::EpochMillis => DataType::TIMESTAMP,
        Kind::Date => DataType::DATE,
        Kind::Boolean => DataType::BOOLEAN,
    }
}

/// Opens the table, creating it with the spec's schema and properties if it does not exist, and adding any column
/// the spec has and the table lacks (new nullable columns: Delta schema evolution).
#[instrument(skip(settings), fields(table = spec.name))]
pub async fn open_or_create(settings: &DeltaSettings, spec: &'static TableSpec) -> Result<DeltaTable, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    let url = settings.table_url(spec)?;
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .map_err(err)?
        .with_storage_options(settings.storage_options.clone())
        .build()
        .map_err(err)?;
    match table.load().await {
        Ok(()) => {}
        Err(DeltaTableError::NotATable(_)) => {
            let columns: Vec<StructField> = spec
                .columns()
                .into_iter()
                .map(|(name, kind, nullable)| StructField::new(name, delta_type(kind), nullable))
                .collect();
            let created = table
                .create()
                .with_table_name(spec.name)
                .with_columns(columns)
                .with_partition_columns(spec.partition_columns())
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(settings.checkpoint_interval.to_string()),
                )
                .with_configuration_property(TableProperty::LogRetentionDuration, Some(settings.log_retention.clone()))
                .with_configuration_property(
                    TableProperty::SetTransactionRetentionDuration,
                    Some(settings.txn_retention.clone()),
                )
                .with_save_mode(SaveMode::Ignore)
                // A creation is version 0 or nothing. deltalake retries a commit that lost its version, and a
                // creation that lost version 0 to another writer's would land as version 1: the table created a
                // second time, under a new id and with the schema of the moment the loser started.
                .with_commit_properties(CommitProperties::default().with_max_retries(0))
                .await;
            match created {
                Ok(t) => {
                    info!(version = t.version(), "created table");
                    table = t;
                }
                // Another writer created it first (or the creation failed: then the load finds no table).
                Err(e) => {
                    warn!(error = %e, "create failed; loading the table another writer created");
                    table = load_created(settings, spec, url, e).await?;
                }
            }
        }
        Err(e) => return Err(err(e)),
    }
    evolve(table, spec).await
}

/// Loads the table another writer created after this one's creation failed with `create_error`. The winner's
/// version 0 may not be readable yet: S3 can refuse a create-only PUT with 409 while another one of the key is in
/// flight, and moto's are not atomic under load. A missing table is looked for again (five loads over about a
/// second, jittered) before `create_error`, the failure that counts, is the caller's.
async fn load_created(
    settings: &DeltaSettings,
    spec: &'static TableSpec,
    url: Url,
    create_error: DeltaTableError,
) -> Result<DeltaTable, DeltaError> {
    let mut pause = Duration::from_millis(50);
    for look in 1.. {
        match open_existing(spec, url.clone(), settings.storage_options.clone()).await {
            Err(DeltaError::Delta { source: DeltaTableError::NotATable(_), .. }) if look == 5 => break,
            Err(DeltaError::Delta { source: DeltaTableError::NotATable(message), .. }) => {
                warn!(%message, "the table another writer created is not there yet; looking again");
                tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    Err(DeltaError::Delta { table: spec.name, source: create_error })
}

/// The table brought up to date after a change of its metadata lost to another writer's, and its schema.
async fn reload(
    mut table: DeltaTable,
    spec: &'static TableSpec,
) -> Result<(DeltaTable, deltalake::kernel::SchemaRef), DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    table.update_state().await.map_err(err)?;
    let schema = table.snapshot().map_err(err)?.schema();
    Ok((table, schema))
}

/// Refuses a table whose columns this writer does not know or types differently.
fn check_columns(schema: &deltalake::kernel::StructType, spec: &'static TableSpec) -> Result<(), DeltaError> {
    let wanted = spec.columns();
    for field in schema.fields() {
        match wanted.iter().find(|(n, ..)| *n == field.name()) {
            None => {
                return Err(DeltaError::Schema {
                    table: spec.name,
                    message: format!("the table has a column {:?} this writer does not know", field.name()),
                })
            }
            Some((name, kind, _)) if &delta_type(*kind) != field.data_type() => {
                return Err(DeltaError::Schema {
                    table: spec.name,
                    message: format!("column {name:?} is {:?} in the table, {kind:?} here", field.data_type()),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Adds the spec's columns the table lacks; refuses a table whose columns this writer does not know or types
/// differently.
pub(crate) async fn evolve(table: DeltaTable, spec: &'static TableSpec) -> Result<DeltaTable, DeltaError> {
    let schema = table.snapshot().map_err(|source| DeltaError::Delta { table: spec.name, source })?.schema();
    check_columns(&schema, spec)?;
    let wanted = spec.columns();
    // Columns the spec has made nullable since the table was created (`lsn`, once pg-poller's changes came):
    // relaxed in place, as Delta allows.
    let relax: Vec<&str> = wanted
        .iter()
        .filter(|(n, _, nullable)| *nullable && schema.field(n).is_some_and(|f| !f.is_nullable()))
        .map(|(n, ..)| *n)
        .collect();
    let mut table = table;
    for name in relax {
        table = match table.clone().drop_column_not_null().with_column(name).await {
            Ok(t) => t,
            // Another writer relaxed it first (a concurrent metadata change): its version holds the change.
            Err(e) => {
                warn!(column = name, error = %e, "dropping NOT NULL failed; reloading");
                let (t, schema) = reload(table, spec).await?;
                if !schema.field(name).is_some_and(|f| f.is_nullable()) {
                    return Err(DeltaError::Delta { table: spec.name, source: e });
                }
                t
            }
        };
        info!(column = name, version = table.version(), "column made nullable");
    }
    let schema = table.snapshot().map_err(|source| DeltaError::Delta { table: spec.name, source })?.schema();
    let missing: Vec<StructField> = wanted
        .iter()
        .filter(|(n, ..)| schema.field(n).is_none())
        .map(|(n, k, _)| StructField::new(*n, delta_type(*k), true))
        .collect();
    if missing.is_empty() {
        return Ok(table);
    }
    let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
    match table.clone().add_columns().with_fields(missing).await {
        Ok(table) => {
            info!(columns = ?names, version = table.version(), "added columns to the table");
            Ok(table)
        }
        // Another writer added them first (a concurrent metadata change): its version holds the columns.
        Err(e) => {
            warn!(columns = ?names, error = %e, "adding columns failed; reloading");
            let (t, schema) = reload(table, spec).await?;
            check_columns(&schema, spec)?;
            if wanted.iter().any(|(n, ..)| schema.field(n).is_none()) {
                return Err(DeltaError::Delta { table: spec.name, source: e });
            }
            Ok(t)
        }
    }
}
