//! moto server, started per test on a free port and killed when dropped.

use std::process::{Child, Command};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;

use crate::{start_server, unique_name, venv_bin};

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto server from the venv and waits until it answers.
    pub async fn start() -> Moto {
        let bin = venv_bin("moto_server");
        assert!(bin.exists(), "{} is missing: run `make venv` first", bin.display());
        let endpoint = |port: u16| format!("http://127.0.0.1:{port}");
        let (child, port) = start_server(
            "moto server",
            Duration::from_secs(120),
            |port| {
                let mut cmd = Command::new(&bin);
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                cmd
            },
            |port| async move {
                s3_client(&config_for(&endpoint(port)))
                    .list_buckets()
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| format!("{e:?}"))
            },
        )
        .await;
        Moto { child, endpoint: endpoint(port) }
    }

    /// CPU time the server has used so far, in seconds (what a benchmark's function leaves it to do on the same
    /// cores).
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::process_cpu_seconds(self.child.id())
    }

    /// SDK configuration for this server (static test credentials, us-east-1).
    pub fn sdk_config(&self) -> SdkConfig {
        config_for(&self.endpoint)
    }

    /// A path-style S3 client for this server.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.sdk_config())
    }

    /// A Secrets Manager client for this server.
    pub fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk_config())
    }

    /// Creates a bucket with a name unique to this test and returns the name.
    pub async fn bucket(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.s3().create_bucket().bucket(&name).send().await.expect("create bucket");
        name
    }

    /// Environment a function process needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The settings of the bronze tables in `bucket` on this moto (`bronze/`, delta-writer's creation defaults).
    pub fn delta_settings(&self, bucket: &str) -> fleetlake_delta::DeltaSettings {
        fleetlake_delta::DeltaSettings::reader(bucket, "bronze/", self.delta_storage_options()).expect("a bucket URL")
    }

    /// deltalake storage options for this server (endpoint over plain HTTP, region, the test credentials).
    pub fn delta_storage_options(&self) -> std::collections::HashMap<String, String> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Creates Glue database `database` and the bronze tables' Glue tables as the local stack does, from
    /// `infra/local/stack.json`, located in `bucket`.
    pub async fn glue_bronze_tables(&self, database: &str, bucket: &str) -> aws_sdk_glue::Client {
        use aws_sdk_glue::types::{Column, DatabaseInput, SerDeInfo, StorageDescriptor, TableInput};
        let glue = aws_sdk_glue::Client::new(&self.sdk_config());
        glue.create_database()
            .database_input(DatabaseInput::builder().name(database).build().expect("database input"))
            .send()
            .await
            .expect("create the Glue database");
        let stack: serde_json::Value =
            serde_json::from_str(include_str!("../../local/stack.json")).expect("stack.json is JSON");
        let cols = |v: &serde_json::Value| -> Vec<Column> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| Column::builder().name(c[0].as_str()?).r#type(c[1].as_str()?).build().ok())
                .collect()
        };
        for def in stack["glue_tables"].as_array().into_iter().flatten() {
            let bronze = def["bronze_table"].as_str().unwrap_or_default();
            let sd = StorageDescriptor::builder()
                .location(format!("s3://{bucket}/bronze/{bronze}/_symlink_format_manifest/"))
                .input_format("org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat")
                .output_format("org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat")
                .serde_info(
                    SerDeInfo::builder()
                        .serialization_library("org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
                        .build(),
                )
                .set_columns(Some(cols(&def["columns"])))
                .build();
            let input = TableInput::builder()
                .name(def["name"].as_str().unwrap_or_default())
                .table_type("EXTERNAL_TABLE")
                .set_partition_keys(Some(cols(&def["partition_keys"])))
                .storage_descriptor(sd)
                .build()
                .expect("table input");
            glue.create_table().database_name(database).table_input(input).send().await.expect("create a Glue table");
        }
        glue
    }

    /// Creates the predictions table as the local stack does (`tables` of `infra/local/stack.json`) under `name`.
    pub async fn predictions_table(&self, name: &str) -> aws_sdk_dynamodb::Client {
        create_predictions_table(&self.sdk_config(), name).await
    }

    /// Every key in `bucket` under `prefix`, sorted.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self.s3().list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list objects");
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        }
        keys.sort();
        keys
    }

    /// The bytes of one object.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self.s3().get_object().bucket(bucket).key(key).send().await.expect("get object");
        out.body.collect().await.expect("read body").into_bytes().to_vec()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates the predictions table as the local stack does (`tables` of `infra/local/stack.json`) under `name`, on the
/// DynamoDB that `config` reaches (moto, or [`Dynoxide`](crate::Dynoxide)).
pub async fn create_predictions_table(config: &SdkConfig, name: &str) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
    };
    let stack: serde_json::Value =
        serde_json::from_str(include_str!("../../local/stack.json")).expect("stack.json is JSON");
    let def = &stack["tables"][0];
    let (hash, range) = (def["hash_key"].as_str().unwrap_or_default(), def["range_key"].as_str().unwrap_or_default());
    let attr = |n: &str| {
        AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().expect("attr")
    };
    let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().expect("key");
    let client = aws_sdk_dynamodb::Client::new(config);
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(attr(hash))
        .attribute_definitions(attr(range))
        .key_schema(key(hash, KeyType::Hash))
        .key_schema(key(range, KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create the predictions table");
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(def["ttl_attribute"].as_str().unwrap_or_default())
        .build()
        .expect("ttl");
    client.update_time_to_live().table_name(name).time_to_live_specification(ttl).send().await.expect("TTL");
    client
}

/// A running dynoxide server (a DynamoDB emulator in Rust backed by SQLite, from crates.io), for benchmarks that
/// must see the caller's cost and not the emulator's: moto does Python work per item under one interpreter lock.
/// Killed when dropped.
#[derive(Debug)]
pub struct Dynoxide {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Dynoxide {
    /// Starts `binary` (`make bench-predict` installs it) in memory on a free port and waits until it answers.
    pub async fn start(binary: &std::path::Path) -> Dynoxide {
        assert!(binary.exists(), "{} is missing (make bench-predict installs it)", binary.display());
        let endpoint = |port: u16| format!("http://127.0.0.1:{port}");
        let (child, port) = start_server(
            "dynoxide",
            Duration::from_secs(30),
            |port| {
                let mut cmd = Command::new(binary);
                cmd.args(["--port", &port.to_string(), "--log", "quiet"]);
                cmd
            },
            |port| async move {
                let client = aws_sdk_dynamodb::Client::new(&config_for(&endpoint(port)));
                client.list_tables().send().await.map(drop).map_err(|e| format!("{e:?}"))
            },
        )
        .await;
        Dynoxide { child, endpoint: endpoint(port) }
    }

    /// SDK configuration for this server (the test credentials, us-east-1).
    pub fn sdk_config(&self) -> SdkConfig {
        config_for(&self.endpoint)
    }
}

impl Drop for Dynoxide {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path-style S3 client for `config`.
fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(true).build())
}

/// SDK configuration for a local endpoint: static test credentials, us-east-1.
pub fn config_for(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "testkit",
        )))
        .build()
}
