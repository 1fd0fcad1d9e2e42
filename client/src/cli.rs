//! The `keyreg` command line.

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use keyreg_consensus::crypto::PublicKey;
use keyreg_registry::genesis::Genesis;
use keyreg_registry::names::{DeviceName, OrgId};
use keyreg_registry::records::{DeviceRecord, DeviceStatus, ValidatorInfo};
use keyreg_registry::tx::{Authority, GovernanceAction, Transaction, TxBody};
use serde_json::{json, Value};

use crate::audit::{
    cli_progress, device_history, run_audit, AuditError, AuditOptions, BlockSource,
    CheckpointOptions, FileSource, HttpSource,
};
use crate::keys::{AdminKey, DeviceKeys};
use crate::light::{now_ms, LightClient, LightConfig, TrustAnchor, VerifiedLookup};
use crate::node::NodeClient;
use crate::session::{LocalIdentity, SecureSession, SessionConfig, VerificationSource};
use crate::txs::{self, TxOutcome};

#[derive(Parser, Debug)]
#[command(
    name = "keyreg",
    version,
    about = "Device and auditor client for the keyreg key registry",
    long_about = "Device and auditor client for the keyreg key registry.\n\nEvery answer from a node is verified against the genesis trust anchor (commit certificates, validator-set handovers, state proofs) before it is shown or used."
)]
pub struct Cli {
    /// Node API base URL (repeatable; tried in order, a failing node is skipped).
    #[arg(
        long = "node",
        global = true,
        env = "KEYREG_NODE",
        value_delimiter = ','
    )]
    pub nodes: Vec<String>,
    /// Genesis file: the trust anchor.
    #[arg(long, global = true, env = "KEYREG_GENESIS")]
    pub genesis: Option<PathBuf>,
    /// Light-client state file (trusted validator set, highest verified
    /// header); read at start and updated after each command.
    #[arg(long, global = true, env = "KEYREG_STATE")]
    pub state: Option<PathBuf>,
    /// Machine-readable JSON output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Per-request timeout towards nodes, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout: u64,
    /// Freshness window: refuse looked-up headers older than this many seconds.
    #[arg(long, global = true, default_value_t = 600)]
    pub max_age: u64,
    /// Ask every node and compare their answers (detects split views).
    #[arg(long, global = true)]
    pub cross_check: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a device or admin key file (mode 0600).
    #[command(subcommand)]
    Keygen(Keygen),
    /// Register one device, or a lot of devices from a CSV file.
    Register(RegisterArgs),
    /// Rotate a device's keys to its pre-committed next key (or, with
    /// --admin, recover it with fresh keys).
    Rotate(RotateArgs),
    /// Revoke a device (irreversible: the name is never usable again).
    Revoke(RevokeArgs),
    /// Look a device up and verify the answer.
    Lookup(LookupArgs),
    /// A device's whole key history (registrations, rotations, revocation),
    /// each event proven by a full replay from genesis.
    History(HistoryArgs),
    /// Replay the ledger from genesis: every certificate, signature, root and
    /// validator-set change is recomputed. Exits 1 on the first divergence.
    Audit(AuditArgs),
    /// Propose, approve, inspect and submit governance actions.
    #[command(subcommand)]
    Governance(Governance),
    /// Encrypted, mutually authenticated pipe between two devices.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Nodes' reported status and the verified head.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum Keygen {
    /// Keys for device NAME (org/local): signing, agreement (X25519) and the
    /// pre-committed next signing key.
    Device {
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// A signing key for an administrator of ORG.
    Admin {
        org: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Return after submission instead of waiting for the commit.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the commit, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The org admin's key file.
    #[arg(long)]
    pub admin: PathBuf,
    /// The device's key file.
    #[arg(long, conflicts_with = "lot", required_unless_present = "lot")]
    pub device: Option<PathBuf>,
    /// A lot file: `name,key_file[,expires_at_ms[,key=value;...]]` per line.
    #[arg(long)]
    pub lot: Option<PathBuf>,
    /// Expiry of the registration (unix milliseconds).
    #[arg(long, conflicts_with = "lot")]
    pub expires_at_ms: Option<u64>,
    /// Metadata entry KEY=VALUE (repeatable).
    #[arg(long = "meta", conflicts_with = "lot")]
    pub metadata: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// The device's key file (updated in place).
    #[arg(long)]
    pub device: PathBuf,
    /// Recover as this org admin: fresh keys, no need for the device's key.
    #[arg(long)]
    pub admin: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    pub name: String,
    #[arg(long)]
    pub reason: String,
    /// Revoke with the device's own key file.
    #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
    pub device: Option<PathBuf>,
    /// Revoke as an org admin.
    #[arg(long)]
    pub admin: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct LookupArgs {
    pub name: String,
}

/// Where a replay reads blocks: the first `--node`, or an export file.
#[derive(Args, Debug)]
pub struct LedgerSourceArgs {
    /// An exported ledger (`keyreg-node export`) instead of a node.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    pub name: String,
    #[command(flatten)]
    pub source: LedgerSourceArgs,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub source: LedgerSourceArgs,
    /// Save progress here (and with --resume, continue from it).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Save the checkpoint every N blocks.
    #[arg(long, default_value_t = 1000, requires = "checkpoint")]
    pub checkpoint_every: u64,
    /// Continue from the checkpoint file when it exists.
    #[arg(long, requires = "checkpoint")]
    pub resume: bool,
    /// Most blocks whose signatures are verified in one batch.
    #[arg(long, default_value_t = AuditOptions::DEFAULT_WINDOW_BLOCKS)]
    pub window_blocks: usize,
    /// Most transactions whose signatures are verified in one batch.
    #[arg(long, default_value_t = AuditOptions::DEFAULT_WINDOW_TXS)]
    pub window_txs: usize,
}

#[derive(Subcommand, Debug)]
pub enum Governance {
    /// Write a proposal signed by the proposing admin to FILE.
    Propose {
        #[arg(long)]
        admin: PathBuf,
        /// The governance record's next sequence number.
        #[arg(long)]
        sequence: u64,
        #[arg(long)]
        out: PathBuf,
        #[command(subcommand)]
        action: ActionArgs,
    },
    /// Add an admin's approval (signature) to a proposal file.
    Approve {
        file: PathBuf,
        #[arg(long)]
        admin: PathBuf,
    },
    /// Show a proposal and who signed it.
    Show { file: PathBuf },
    /// Submit a proposal file (once enough organisations approved).
    Submit {
        file: PathBuf,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ActionArgs {
    /// Admit an organisation.
    AddOrg {
        org: String,
        /// Admin public key (hex, repeatable).
        #[arg(long = "org-admin", required = true)]
        admins: Vec<String>,
    },
    /// Remove an organisation (it must have no active devices).
    RemoveOrg { org: String },
    /// Replace an organisation's admin keys.
    SetOrgAdmins {
        org: String,
        #[arg(long = "org-admin", required = true)]
        admins: Vec<String>,
    },
    /// Replace the validator set (takes effect in the next epoch).
    SetValidators {
        /// KEY_HEX:POWER:ADDRESS (repeatable).
        #[arg(long = "validator", required = true)]
        validators: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Wait for one peer on ADDR; pipe stdin lines to it and its lines to stdout.
    Listen {
        #[arg(long)]
        device: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7700")]
        bind: String,
    },
    /// Connect to device NAME at ADDR; pipe stdin lines to it and its lines to stdout.
    Connect {
        name: String,
        #[arg(long)]
        device: PathBuf,
        #[arg(long)]
        addr: String,
    },
}

/// What a command prints: text for people, JSON for scripts.
#[derive(Debug)]
struct Output {
    text: String,
    json: Value,
}

impl Cli {
    fn node_clients(&self) -> Vec<NodeClient> {
        let timeout = Duration::from_secs(self.timeout.max(1));
        self.nodes
            .iter()
            .map(|u| NodeClient::new(u, timeout))
            .collect()
    }

    fn light_client(&self) -> Result<LightClient> {
        let genesis = self
            .genesis
            .as_ref()
            .ok_or_else(|| anyhow!("--genesis FILE (the trust anchor) is required"))?;
        let anchor = TrustAnchor::from_genesis_file(genesis)?;
        let config = LightConfig {
            max_header_age: Duration::from_secs(self.max_age),
            cross_check: self.cross_check,
            ..LightConfig::default()
        };
        Ok(match &self.state {
            Some(path) => LightClient::open(anchor, self.node_clients(), config, path)?,
            None => LightClient::new(anchor, self.node_clients(), config),
        })
    }

    fn save(&self, client: &LightClient) -> Result<()> {
        if let Some(path) = &self.state {
            client.save(path)?;
        }
        Ok(())
    }
}

/// Runs the parsed command line.
pub fn run(cli: &Cli) -> Result<()> {
    let output = match &cli.command {
        Command::Keygen(k) => keygen(k)?,
        Command::Register(a) => register(cli, a)?,
        Command::Rotate(a) => rotate(cli, a)?,
        Command::Revoke(a) => revoke(cli, a)?,
        Command::Lookup(a) => lookup(cli, a)?,
        Command::History(a) => history(cli, a)?,
        Command::Audit(a) => audit(cli, a)?,
        Command::Governance(g) => governance(cli, g)?,
        Command::Session(s) => {
            let stdin = Box::new(std::io::BufReader::new(std::io::stdin()));
            return session(cli, s, stdin, &mut std::io::stdout());
        }
        Command::Status => status(cli)?,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&output.json)?);
    } else {
        println!("{}", output.text.trim_end());
    }
    Ok(())
}

fn device_name(s: &str) -> Result<DeviceName> {
    DeviceName::new(s).with_context(|| format!("device name {s:?}"))
}

fn keygen(k: &Keygen) -> Result<Output> {
    match k {
        Keygen::Device { name, out } => {
            let keys = DeviceKeys::generate(device_name(name)?)?;
            keys.create(out)?;
            let signing = keys.current.signing.public().to_hex();
            let agreement = hex::encode(keys.current.agreement_key().0);
            Ok(Output {
                text: format!(
                    "wrote {}\n  device         {name}\n  signing key    {signing}\n  agreement key  {agreement}\n  next key commitment {}",
                    out.display(),
                    keys.current.next_key_commitment()
                ),
                json: json!({"file": out, "name": name, "signing_key": signing, "agreement_key": agreement,
                    "next_key_commitment": keys.current.next_key_commitment()}),
            })
        }
        Keygen::Admin { org, out } => {
            let key = AdminKey::generate(
                OrgId::new(org).with_context(|| format!("organisation {org:?}"))?,
            )?;
            key.create(out)?;
            Ok(Output {
                text: format!(
                    "wrote {}\n  admin of {org}\n  public key {}",
                    out.display(),
                    key.public()
                ),
                json: json!({"file": out, "org": org, "public_key": key.public()}),
            })
        }
    }
}

/// Submits `tx`, waits (unless told not to) and describes the outcome.
/// Fails when the transaction is rejected or the wait times out.
fn submit_and_wait(
    nodes: &[NodeClient],
    tx: &Transaction,
    wait: &WaitArgs,
) -> Result<(Value, Option<u64>)> {
    let (hash, node) = txs::submit(nodes, tx)?;
    if wait.no_wait {
        return Ok((
            json!({"hash": hash, "status": "pending", "node": node}),
            None,
        ));
    }
    match txs::wait_for_commit(nodes, &hash, Duration::from_secs(wait.wait_secs))? {
        TxOutcome::Committed { height, index } => Ok((
            json!({"hash": hash, "status": "committed", "height": height, "index": index}),
            Some(height),
        )),
        TxOutcome::Rejected { height, reason } => {
            bail!(
                "transaction {hash} rejected{}: {reason}",
                height
                    .map(|h| format!(" at height {h}"))
                    .unwrap_or_default()
            )
        }
    }
}

/// Confirms a commit a node reported at `height` by a verified look-up of
/// `name`: `effect` must hold for the verified record.
fn confirm_effect(
    light: &mut LightClient,
    name: &DeviceName,
    height: u64,
    what: &str,
    effect: impl Fn(Option<&DeviceRecord>) -> bool,
) -> Result<VerifiedLookup> {
    let found = light.lookup(name)?;
    if found.header.height < height {
        bail!(
            "a node reported the commit at height {height}, but the freshest verified state is height {}; confirm later with `keyreg lookup {name}`",
            found.header.height
        );
    }
    if !effect(found.record.as_ref()) {
        bail!("a node reported the commit at height {height}, but the verified record of {name} does not show {what}");
    }
    Ok(found)
}

fn register(cli: &Cli, args: &RegisterArgs) -> Result<Output> {
    let mut light = cli.light_client()?;
    let chain_id = light.chain_id().to_string();
    let admin = AdminKey::load(&args.admin)?;
    let nodes = cli.node_clients();
    if let Some(lot) = &args.lot {
        let entries = txs::read_lot_file(lot)?;
        let batch = txs::register_lot(&chain_id, &admin, &entries)?;
        let progress = progress_bar(cli, entries.len() as u64, "registering");
        let mut results = Vec::new();
        for tx in &batch {
            let (result, committed) = submit_and_wait(&nodes, tx, &args.wait)?;
            let TxBody::RegisterLot { devices, .. } = &tx.body else {
                bail!("internal error: a lot produced a non-lot transaction");
            };
            // A lot applies all-or-nothing: one verified record proves it.
            if let (Some(height), Some(last)) = (committed, devices.last()) {
                confirm_effect(&mut light, &last.name, height, "its key", |r| {
                    r.is_some_and(|r| r.signing_key == last.signing_key)
                })?;
            }
            progress.inc(devices.len() as u64);
            results.push(result);
        }
        progress.finish_and_clear();
        cli.save(&light)?;
        return Ok(Output {
            text: format!(
                "{} devices in {} transaction(s): {}",
                entries.len(),
                batch.len(),
                if args.wait.no_wait {
                    "submitted"
                } else {
                    "committed"
                }
            ),
            json: json!({"devices": entries.len(), "transactions": results}),
        });
    }
    let device_file = args
        .device
        .as_ref()
        .ok_or_else(|| anyhow!("--device or --lot is required"))?;
    let device = DeviceKeys::load(device_file)?;
    let metadata =
        txs::parse_metadata(args.metadata.iter().map(String::as_str)).map_err(|e| anyhow!(e))?;
    let tx = txs::register_device(&chain_id, &admin, &device, args.expires_at_ms, metadata);
    let (result, committed) = submit_and_wait(&nodes, &tx, &args.wait)?;
    let mut text = format!(
        "{}: {}",
        device.name,
        result.get("status").and_then(|s| s.as_str()).unwrap_or("?")
    );
    if let Some(height) = committed {
        // Trust nothing the node said: confirm the effect by a verified look-up.
        let key = device.current.signing.public();
        let found = confirm_effect(&mut light, &device.name, height, "this device's key", |r| {
            r.is_some_and(|r| r.signing_key == key)
        })?;
        text.push_str(&format!(" (verified at height {})", found.header.height));
        cli.save(&light)?;
    }
    Ok(Output { text, json: result })
}

fn rotate(cli: &Cli, args: &RotateArgs) -> Result<Output> {
    let mut light = cli.light_client()?;
    let chain_id = light.chain_id().to_string();
    let mut keys = DeviceKeys::load(&args.device)?;
    let record = active_record(&mut light, &keys.name)?;
    if let Some(pending) = &keys.pending_rotation {
        if record.signing_key == pending.signing.public() {
            // An earlier run's rotation committed after it stopped watching.
            keys.current = pending.clone();
            keys.pending_rotation = None;
            keys.replace(&args.device)?;
            cli.save(&light)?;
            return Ok(Output {
                text: format!(
                    "{}: an earlier rotation had committed; key file updated",
                    keys.name
                ),
                json: json!({"name": keys.name, "status": "committed", "key_version": record.key_version}),
            });
        }
    }
    let admin = args.admin.as_deref().map(AdminKey::load).transpose()?;
    let new = match (&keys.pending_rotation, &admin) {
        // Retrying: the same keys give the same transaction.
        (Some(pending), _) => pending.clone(),
        (None, Some(_)) => crate::keys::DeviceKeySet::generate()?,
        (None, None) => keys.current.successor()?,
    };
    if admin.is_none() && record.signing_key != keys.current.signing.public() {
        bail!(
            "{}'s registered signing key is not the one in {}",
            keys.name,
            args.device.display()
        );
    }
    let tx = match &admin {
        Some(admin) => txs::rotate_by_admin(&chain_id, admin, &keys.name, &new, record.key_version),
        None => txs::rotate_device(&chain_id, &keys, &new, record.key_version),
    };
    // Persist the new keys before anything can commit them.
    keys.pending_rotation = Some(new.clone());
    keys.replace(&args.device)?;
    // On failure the pending keys stay in the file: a timed-out rotation may
    // still commit (the next run then completes it), a rejected one is
    // retried with the same keys.
    let (result, committed) = submit_and_wait(&cli.node_clients(), &tx, &args.wait)?;
    let Some(height) = committed else {
        return Ok(Output {
            text: format!(
                "{}: rotation submitted; run rotate again to complete it",
                keys.name
            ),
            json: result,
        });
    };
    let new_key = new.signing.public();
    let found = confirm_effect(&mut light, &keys.name, height, "the new key", |r| {
        r.is_some_and(|r| r.signing_key == new_key)
    })?;
    let Some(now) = found.record.clone() else {
        bail!("internal error: a confirmed record vanished");
    };
    keys.current = new;
    keys.pending_rotation = None;
    keys.replace(&args.device)?;
    cli.save(&light)?;
    Ok(Output {
        text: format!(
            "{}: rotated to key version {} (verified at height {})\n  signing key    {}\n  agreement key  {}",
            keys.name,
            now.key_version,
            found.header.height,
            now.signing_key,
            hex::encode(now.agreement_key.0)
        ),
        json: result,
    })
}

/// The device's verified, active record.
fn active_record(light: &mut LightClient, name: &DeviceName) -> Result<DeviceRecord> {
    let found = light.lookup(name)?;
    match found.record {
        Some(r) if r.is_active() => Ok(r),
        Some(_) => bail!("{name} is revoked"),
        None => bail!(
            "{name} is not registered (verified absent at height {})",
            found.header.height
        ),
    }
}

fn revoke(cli: &Cli, args: &RevokeArgs) -> Result<Output> {
    let mut light = cli.light_client()?;
    let chain_id = light.chain_id().to_string();
    let name = device_name(&args.name)?;
    let tx = match (&args.device, &args.admin) {
        (Some(path), _) => {
            let keys = DeviceKeys::load(path)?;
            if keys.name != name {
                bail!(
                    "{} holds the keys of {}, not {name}",
                    path.display(),
                    keys.name
                );
            }
            txs::revoke(
                &chain_id,
                &name,
                &args.reason,
                Authority::Device,
                &keys.current.signing,
            )
        }
        (None, Some(path)) => {
            let admin = AdminKey::load(path)?;
            txs::revoke(
                &chain_id,
                &name,
                &args.reason,
                Authority::Admin,
                &admin.signing,
            )
        }
        (None, None) => bail!("--device or --admin is required"),
    };
    let (result, committed) = submit_and_wait(&cli.node_clients(), &tx, &args.wait)?;
    let mut text = format!(
        "{name}: revocation {}",
        result.get("status").and_then(|s| s.as_str()).unwrap_or("?")
    );
    if let Some(height) = committed {
        let found = confirm_effect(&mut light, &name, height, "the revocation", |r| {
            r.is_some_and(|r| !r.is_active())
        })?;
        text.push_str(&format!(
            " (verified revoked at height {})",
            found.header.height
        ));
        cli.save(&light)?;
    }
    Ok(Output { text, json: result })
}

fn lookup(cli: &Cli, args: &LookupArgs) -> Result<Output> {
    let mut light = cli.light_client()?;
    let found = light.lookup(&device_name(&args.name)?)?;
    cli.save(&light)?;
    Ok(describe_lookup(&found))
}

fn describe_lookup(found: &VerifiedLookup) -> Output {
    let header = &found.header;
    let age_s = now_ms().saturating_sub(header.timestamp_ms) / 1000;
    let verified = format!(
        "verified: height {}, block time {} ms ({age_s} s ago), epoch {}, {}/{} voting power signed by {} validators, proof from {}",
        header.height,
        header.timestamp_ms,
        header.epoch,
        found.signed_power,
        found.total_power,
        found.signers.len(),
        found.source
    );
    let mut text = match &found.record {
        None => format!("{}: not registered (proven absent)\n", found.name),
        Some(r) => {
            let status = match &r.status {
                DeviceStatus::Active if r.is_expired_at(now_ms()) => "EXPIRED".to_string(),
                DeviceStatus::Active => "active".to_string(),
                DeviceStatus::Revoked { height, reason } => {
                    format!("REVOKED at height {height}: {reason}")
                }
            };
            let metadata: Vec<String> =
                r.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "{}: {status}\n  signing key    {}\n  agreement key  {}\n  key version    {}\n  next key commitment {}\n  registered at height {}, last changed at height {}\n  expires        {}\n  metadata       {}\n",
                found.name,
                r.signing_key,
                hex::encode(r.agreement_key.0),
                r.key_version,
                r.next_key_commitment.map_or("none".into(), |h| h.to_hex()),
                r.registered_at,
                r.last_changed,
                r.expires_at_ms.map_or("never".into(), |t| format!("{t} (unix ms)")),
                if metadata.is_empty() { "-".into() } else { metadata.join(", ") },
            )
        }
    };
    text.push_str(&verified);
    for skipped in &found.skipped {
        text.push_str(&format!("\nskipped {}: {}", skipped.node, skipped.error));
    }
    Output {
        text,
        json: json!({
            "name": found.name,
            "record": found.record,
            "verified": {
                "height": header.height,
                "header_hash": header.hash(),
                "timestamp_ms": header.timestamp_ms,
                "epoch": header.epoch,
                "state_root": header.state_root,
                "signers": found.signers,
                "signed_power": found.signed_power,
                "total_power": found.total_power,
                "source": found.source,
            },
            "skipped": found.skipped.iter().map(|s| json!({"node": s.node, "error": s.error.to_string()})).collect::<Vec<_>>(),
        }),
    }
}

/// Which device names a transaction touches, and how.
impl Cli {
    fn genesis_file(&self) -> Result<Genesis> {
        let path = self
            .genesis
            .as_ref()
            .ok_or_else(|| anyhow!("--genesis FILE (the trust anchor) is required"))?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading genesis {}", path.display()))?;
        Genesis::from_json(&text).with_context(|| format!("genesis {}", path.display()))
    }

    /// Runs `replay` over the ledger source the arguments name.
    fn with_ledger_source<T>(
        &self,
        source: &LedgerSourceArgs,
        replay: impl FnOnce(Box<dyn BlockSource>) -> Result<T, AuditError>,
    ) -> Result<T> {
        let boxed: Box<dyn BlockSource> = match (&source.file, self.nodes.first()) {
            (Some(path), _) => Box::new(FileSource::open_path(path)?),
            (None, Some(url)) => Box::new(HttpSource::new(
                url,
                Duration::from_secs(self.timeout.max(1)),
            )),
            (None, None) => bail!("give --node URL or --file EXPORT"),
        };
        Ok(replay(boxed)?)
    }
}

fn history(cli: &Cli, args: &HistoryArgs) -> Result<Output> {
    let name = device_name(&args.name)?;
    let genesis = cli.genesis_file()?;
    let mut progress = cli_progress(cli.json);
    let events = cli.with_ledger_source(&args.source, |source| {
        device_history(source, &genesis, &name, progress.as_mut())
    })?;
    let mut text = String::new();
    for e in &events {
        text.push_str(&format!(
            "height {:>8} #{:<4} {:<10} key v{} signing {} agreement {}  tx {}\n",
            e.height,
            e.index,
            e.kind,
            e.key_version,
            e.signing_key,
            hex::encode(e.agreement_key.0),
            e.tx_hash,
        ));
    }
    if events.is_empty() {
        text.push_str(&format!("{name} was never registered\n"));
    }
    text.push_str("every event proven: chain replayed from genesis, certificates verified, transaction included under its header's tx_root");
    Ok(Output {
        text,
        json: json!({"name": name, "events": events}),
    })
}

fn audit(cli: &Cli, args: &AuditArgs) -> Result<Output> {
    let mut opts = AuditOptions::new(cli.genesis_file()?);
    opts.window_blocks = args.window_blocks.max(1);
    opts.window_txs = args.window_txs.max(1);
    opts.checkpoint = args.checkpoint.as_ref().map(|path| CheckpointOptions {
        path: path.clone(),
        every: args.checkpoint_every.max(1),
        resume: args.resume,
    });
    let mut progress = cli_progress(cli.json);
    let summary = cli.with_ledger_source(&args.source, |source| {
        run_audit(&opts, source, progress.as_mut())
    })?;
    Ok(Output {
        text: summary.to_string(),
        json: serde_json::to_value(&summary)?,
    })
}

fn public_keys(hexes: &[String]) -> Result<Vec<PublicKey>> {
    let keys = hexes
        .iter()
        .map(|h| PublicKey::from_hex(h).with_context(|| format!("admin key {h:?}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(txs::admin_list(keys))
}

fn parse_action(action: &ActionArgs) -> Result<GovernanceAction> {
    let org = |s: &str| OrgId::new(s).with_context(|| format!("organisation {s:?}"));
    Ok(match action {
        ActionArgs::AddOrg { org: o, admins } => GovernanceAction::AddOrg {
            org: org(o)?,
            admins: public_keys(admins)?,
        },
        ActionArgs::RemoveOrg { org: o } => GovernanceAction::RemoveOrg { org: org(o)? },
        ActionArgs::SetOrgAdmins { org: o, admins } => GovernanceAction::SetOrgAdmins {
            org: org(o)?,
            admins: public_keys(admins)?,
        },
        ActionArgs::SetValidators { validators } => {
            let mut list = validators
                .iter()
                .map(|v| {
                    let mut parts = v.splitn(3, ':');
                    let (Some(key), Some(power), Some(address)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        bail!("validator {v:?} is not KEY:POWER:ADDRESS");
                    };
                    Ok(ValidatorInfo::new(
                        PublicKey::from_hex(key)
                            .with_context(|| format!("validator key {key:?}"))?,
                        power
                            .parse()
                            .with_context(|| format!("validator power {power:?}"))?,
                        address,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            list.sort_by_key(|v| v.key);
            GovernanceAction::SetValidators { validators: list }
        }
    })
}

fn read_proposal(path: &Path) -> Result<Transaction> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let tx = txs::from_hex(&text)?;
    if !matches!(tx.body, TxBody::Governance { .. }) {
        bail!("{} is not a governance proposal", path.display());
    }
    Ok(tx)
}

fn write_proposal(path: &Path, tx: &Transaction) -> Result<()> {
    std::fs::write(path, txs::to_hex(tx) + "\n").with_context(|| path.display().to_string())
}

fn describe_proposal(tx: &Transaction) -> Output {
    let (sequence, action) = match &tx.body {
        TxBody::Governance { sequence, action } => (*sequence, format!("{action:?}")),
        other => (0, format!("{other:?}")),
    };
    let signers: Vec<String> = tx.signatures.iter().map(|s| s.signer.to_hex()).collect();
    Output {
        text: format!(
            "governance proposal {}\n  chain     {}\n  sequence  {sequence}\n  action    {action}\n  signed by {}",
            tx.hash(),
            tx.chain_id,
            if signers.is_empty() { "nobody".into() } else { signers.join(", ") }
        ),
        json: json!({"hash": tx.hash(), "chain_id": tx.chain_id, "sequence": sequence, "action": action, "signers": signers}),
    }
}

fn governance(cli: &Cli, command: &Governance) -> Result<Output> {
    match command {
        Governance::Propose {
            admin,
            sequence,
            out,
            action,
        } => {
            let light = cli.light_client()?;
            let admin = AdminKey::load(admin)?;
            let mut tx = txs::governance(light.chain_id(), *sequence, parse_action(action)?);
            tx.sign(&admin.signing);
            write_proposal(out, &tx)?;
            let mut output = describe_proposal(&tx);
            output.text = format!("wrote {}\n{}", out.display(), output.text);
            Ok(output)
        }
        Governance::Approve { file, admin } => {
            let mut tx = read_proposal(file)?;
            let admin = AdminKey::load(admin)?;
            tx.sign(&admin.signing);
            write_proposal(file, &tx)?;
            Ok(describe_proposal(&tx))
        }
        Governance::Show { file } => Ok(describe_proposal(&read_proposal(file)?)),
        Governance::Submit { file, wait } => {
            let tx = read_proposal(file)?;
            let (result, _) = submit_and_wait(&cli.node_clients(), &tx, wait)?;
            Ok(Output {
                text: format!(
                    "governance proposal {}: {}",
                    tx.hash(),
                    result.get("status").and_then(|s| s.as_str()).unwrap_or("?")
                ),
                json: result,
            })
        }
    }
}

fn status(cli: &Cli) -> Result<Output> {
    let nodes = cli.node_clients();
    if nodes.is_empty() {
        bail!("--node URL is required");
    }
    let mut light = cli.light_client()?;
    let genesis_hash = light.anchor().genesis_hash.to_hex();
    let mut text = String::new();
    let mut reports = Vec::new();
    let mut head = None;
    for node in &nodes {
        match node.status() {
            Ok(s) => {
                let same_chain = s.genesis_hash == genesis_hash && s.chain_id == light.chain_id();
                text.push_str(&format!(
                    "{}: height {} epoch {} peers {} mempool {}{}{}{}\n",
                    node.url(),
                    s.height,
                    s.epoch,
                    s.peers,
                    s.mempool,
                    if s.syncing { " SYNCING" } else { "" },
                    if s.is_validator { " validator" } else { "" },
                    if same_chain {
                        ""
                    } else {
                        " OTHER CHAIN (genesis differs)"
                    },
                ));
                if same_chain {
                    head = head.max(Some(s.height));
                }
                reports.push(json!({"node": node.url(), "status": s, "same_chain": same_chain}));
            }
            Err(e) => {
                text.push_str(&format!("{}: {e}\n", node.url()));
                reports.push(json!({"node": node.url(), "error": e.to_string()}));
            }
        }
    }
    let verified = match head {
        Some(height) if height > 0 => {
            let block = light.verified_block(height)?;
            let header = &block.block.block.header;
            text.push_str(&format!(
                "verified head: height {} hash {} epoch {} time {} ms, signed by {} validators (from {})",
                header.height,
                header.hash(),
                header.epoch,
                header.timestamp_ms,
                block.signers.len(),
                block.source
            ));
            cli.save(&light)?;
            json!({"height": header.height, "hash": header.hash(), "epoch": header.epoch, "timestamp_ms": header.timestamp_ms})
        }
        _ => {
            text.push_str("verified head: none (no node of this chain past genesis)");
            Value::Null
        }
    };
    Ok(Output {
        text,
        json: json!({"chain_id": light.chain_id(), "genesis_hash": genesis_hash, "nodes": reports, "verified_head": verified}),
    })
}

fn progress_bar(cli: &Cli, len: u64, message: &'static str) -> indicatif::ProgressBar {
    if cli.json {
        return indicatif::ProgressBar::hidden();
    }
    // Draws on stderr only when it is a terminal.
    indicatif::ProgressBar::new(len).with_message(message)
}

/// Runs a session command: lines of `input` go to the peer, the peer's
/// messages to `output`.
fn session(
    cli: &Cli,
    command: &SessionCommand,
    input: Box<dyn BufRead + Send>,
    output: &mut dyn Write,
) -> Result<()> {
    let mut light = cli.light_client()?;
    let config = SessionConfig {
        idle_timeout: None,
        ..SessionConfig::new(light.chain_id())
    };
    let (device, session) = match command {
        SessionCommand::Listen { device, bind } => {
            let listener =
                TcpListener::bind(bind).with_context(|| format!("listening on {bind}"))?;
            listen(&mut light, device, &listener, &config)?
        }
        SessionCommand::Connect { name, device, addr } => {
            let peer = device_name(name)?;
            let keys = DeviceKeys::load(device)?;
            let local = local_identity(&mut light, &keys);
            let session =
                SecureSession::connect(addr.as_str(), peer.as_str(), &local, &mut light, &config)?;
            (keys.name.clone(), session)
        }
    };
    cli.save(&light)?;
    run_session(&device, session, input, output)
}

/// Reports the verified peer on stderr and pipes.
fn run_session(
    device: &DeviceName,
    session: SecureSession,
    input: Box<dyn BufRead + Send>,
    output: &mut dyn Write,
) -> Result<()> {
    let peer = session.peer().clone();
    let via = match peer.source {
        VerificationSource::Staple => "its stapled proof",
        VerificationSource::Lookup => "a look-up",
        VerificationSource::Pinned => "a pinned key",
    };
    eprintln!(
        "{device} <-> {} (verified by {via} at height {}); session {}",
        peer.name,
        peer.height,
        hex::encode(session.handshake_hash())
    );
    pipe(session, input, output)
}

/// Accepts one peer on `listener` as the device of `device_file`.
fn listen(
    light: &mut LightClient,
    device_file: &Path,
    listener: &TcpListener,
    config: &SessionConfig,
) -> Result<(DeviceName, SecureSession)> {
    let keys = DeviceKeys::load(device_file)?;
    let local = local_identity(light, &keys);
    eprintln!("{} listening on {}", keys.name, listener.local_addr()?);
    let (stream, from) = listener.accept()?;
    eprintln!("connection from {from}");
    Ok((
        keys.name.clone(),
        SecureSession::respond(stream, &local, light, config)?,
    ))
}

/// This device's identity with a fresh staple when a node can give one
/// (without one, peers look this device up themselves).
fn local_identity(light: &mut LightClient, keys: &DeviceKeys) -> LocalIdentity {
    let mut local = LocalIdentity::new(keys.name.to_string(), keys.current.agreement.clone());
    match light.own_staple(&keys.name, &local.public_key()) {
        Ok(staple) => local.set_staple(Some(staple)),
        Err(e) => eprintln!(
            "warning: no staple for {} ({e}); peers must look it up",
            keys.name
        ),
    }
    local
}

/// Lines of `input` to the peer, the peer's messages to `output`, until the
/// peer closes (or fails).
fn pipe(
    session: SecureSession,
    input: Box<dyn BufRead + Send>,
    output: &mut dyn Write,
) -> Result<()> {
    let (mut sender, mut receiver) = session.split();
    let writer = std::thread::spawn(move || -> Result<()> {
        for line in input.lines() {
            sender.send(line?.as_bytes())?;
        }
        sender.close()?;
        Ok(())
    });
    while let Some(message) = receiver.recv()? {
        let text: String = String::from_utf8_lossy(&message)
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        writeln!(output, "{text}")?;
        output.flush()?;
    }
    // The peer closed. If our side already finished, report its result;
    // otherwise input is still open and the process ends here.
    if writer.is_finished() {
        writer
            .join()
            .map_err(|_| anyhow!("the input thread panicked"))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use keyreg_consensus::codec::Canonical;

    use super::*;
    use crate::testkit::{Chain, FakeNode, CHAIN};

    /// A temp dir holding the chain's genesis file.
    struct Env {
        dir: tempfile::TempDir,
        genesis: PathBuf,
    }

    impl Env {
        fn new(chain: &Chain) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let genesis = dir.path().join("genesis.json");
            std::fs::write(&genesis, chain.genesis.to_json()).unwrap();
            Env { dir, genesis }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn cli(&self, node: &FakeNode, args: &[&str]) -> Cli {
            let mut full = vec![
                "keyreg".to_string(),
                "--node".into(),
                node.url(),
                "--genesis".into(),
                self.genesis.display().to_string(),
                "--state".into(),
                self.path("light.json").display().to_string(),
            ];
            full.extend(args.iter().map(|s| s.to_string()));
            Cli::try_parse_from(full).unwrap()
        }
    }

    fn output(cli: &Cli) -> Result<Output> {
        match &cli.command {
            Command::Keygen(k) => keygen(k),
            Command::Register(a) => register(cli, a),
            Command::Rotate(a) => rotate(cli, a),
            Command::Revoke(a) => revoke(cli, a),
            Command::Lookup(a) => lookup(cli, a),
            Command::History(a) => history(cli, a),
            Command::Audit(a) => audit(cli, a),
            Command::Governance(g) => governance(cli, g),
            Command::Status => status(cli),
            Command::Session(_) => unreachable!("see pipe_connects_two_devices_through_the_cli"),
        }
    }

    /// Serves a committed status for every transaction of the chain.
    fn serve_tx_results(chain: &Chain, node: &FakeNode) {
        for (height, block) in &chain.blocks {
            for (index, tx) in block.block.transactions.iter().enumerate() {
                let hash = tx.hash();
                node.set(
                    "POST",
                    "/v1/transactions",
                    202,
                    format!(r#"{{"hash":"{hash}","status":"pending"}}"#),
                );
                node.set(
                    "GET",
                    &format!("/v1/transactions/{hash}"),
                    200,
                    format!(r#"{{"hash":"{hash}","status":"committed","height":{height},"index":{index}}}"#),
                );
            }
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["keyreg", "register", "--admin", "a.json"]).is_err());
        assert!(Cli::try_parse_from([
            "keyreg", "register", "--admin", "a", "--device", "d", "--lot", "l"
        ])
        .is_err());
    }

    #[test]
    fn register_submits_waits_and_verifies_the_effect() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let keys = DeviceKeys::generate(DeviceName::new("acme/alpha").unwrap()).unwrap();
        keys.create(&env.path("alpha.json")).unwrap();
        chain.admin.create(&env.path("admin.json")).unwrap();
        // The chain as it will be once the CLI's (deterministic) transaction commits.
        let tx = txs::register_device(
            CHAIN,
            &chain.admin,
            &keys,
            None,
            [("model".to_string(), "x1".to_string())].into(),
        );
        chain.commit(vec![tx], now_ms());
        chain.serve(&node, &["acme/alpha"]);
        serve_tx_results(&chain, &node);
        let (admin, alpha) = (env.path("admin.json"), env.path("alpha.json"));
        let cli = env.cli(
            &node,
            &[
                "register",
                "--admin",
                admin.to_str().unwrap(),
                "--device",
                alpha.to_str().unwrap(),
                "--meta",
                "model=x1",
            ],
        );
        let out = output(&cli).unwrap();
        assert_eq!(out.json["status"], "committed");
        assert!(out.text.contains("verified at height 1"), "{}", out.text);
        // The light-client state was saved.
        assert!(env.path("light.json").exists());

        let out = output(&env.cli(&node, &["lookup", "acme/alpha"])).unwrap();
        assert_eq!(out.json["verified"]["height"], 1);
        assert_eq!(
            out.json["record"]["signing_key"],
            keys.current.signing.public().to_hex()
        );
        assert!(out.text.contains("acme/alpha: active"), "{}", out.text);
        assert!(out.text.contains("model=x1"), "{}", out.text);
    }

    #[test]
    fn a_lot_is_registered_and_verified() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let mut csv = String::from("name,key_file\n");
        let mut entries = Vec::new();
        for i in 0..3 {
            let keys =
                DeviceKeys::generate(DeviceName::new(&format!("acme/lot-{i}")).unwrap()).unwrap();
            keys.create(&env.path(&format!("lot-{i}.json"))).unwrap();
            csv.push_str(&format!("acme/lot-{i},lot-{i}.json\n"));
            entries.push(txs::LotEntry {
                keys,
                expires_at_ms: None,
                metadata: Default::default(),
            });
        }
        std::fs::write(env.path("lot.csv"), csv).unwrap();
        chain.admin.create(&env.path("admin.json")).unwrap();
        let batch = txs::register_lot(CHAIN, &chain.admin, &entries).unwrap();
        chain.commit(batch, now_ms());
        chain.serve(&node, &["acme/lot-2"]);
        serve_tx_results(&chain, &node);
        let (admin, lot) = (env.path("admin.json"), env.path("lot.csv"));
        let cli = env.cli(
            &node,
            &[
                "register",
                "--admin",
                admin.to_str().unwrap(),
                "--lot",
                lot.to_str().unwrap(),
            ],
        );
        let out = output(&cli).unwrap();
        assert_eq!(out.json["devices"], 3);
        assert_eq!(out.json["transactions"][0]["status"], "committed");
    }

    #[test]
    fn a_commit_the_chain_does_not_show_is_an_error() {
        let chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let keys = DeviceKeys::generate(DeviceName::new("acme/alpha").unwrap()).unwrap();
        keys.create(&env.path("alpha.json")).unwrap();
        chain.admin.create(&env.path("admin.json")).unwrap();
        // The node claims the commit, but its proofs show no such device.
        let mut served = chain.clone();
        served.commit(vec![], now_ms());
        served.serve(&node, &["acme/alpha"]);
        let tx = txs::register_device(CHAIN, &chain.admin, &keys, None, Default::default());
        let hash = tx.hash();
        node.set(
            "POST",
            "/v1/transactions",
            202,
            format!(r#"{{"hash":"{hash}","status":"pending"}}"#),
        );
        node.set(
            "GET",
            &format!("/v1/transactions/{hash}"),
            200,
            format!(r#"{{"hash":"{hash}","status":"committed","height":1,"index":0}}"#),
        );
        let (admin, alpha) = (env.path("admin.json"), env.path("alpha.json"));
        let cli = env.cli(
            &node,
            &[
                "register",
                "--admin",
                admin.to_str().unwrap(),
                "--device",
                alpha.to_str().unwrap(),
            ],
        );
        let err = output(&cli).unwrap_err().to_string();
        assert!(err.contains("does not show this device's key"), "{err}");
    }

    #[test]
    fn an_interrupted_rotation_is_completed() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let (mut keys, register) = chain.new_device("alpha");
        chain.commit(vec![register], now_ms());
        // A previous run wrote the pending keys, submitted, and stopped.
        let next = keys.current.successor().unwrap();
        keys.pending_rotation = Some(next.clone());
        keys.create(&env.path("alpha.json")).unwrap();
        chain.commit(vec![txs::rotate_device(CHAIN, &keys, &next, 0)], now_ms());
        chain.serve(&node, &["acme/alpha"]);
        let alpha = env.path("alpha.json");
        let out =
            output(&env.cli(&node, &["rotate", "--device", alpha.to_str().unwrap()])).unwrap();
        assert!(
            out.text.contains("earlier rotation had committed"),
            "{}",
            out.text
        );
        let reloaded = DeviceKeys::load(&alpha).unwrap();
        assert!(reloaded.pending_rotation.is_none());
        assert_eq!(reloaded.current.signing.public(), next.signing.public());
        assert_eq!(reloaded.current.agreement_key(), next.agreement_key());
    }

    #[test]
    fn a_rotation_is_submitted_with_the_committed_key_and_retried_identically() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let (keys, register) = chain.new_device("alpha");
        chain.commit(vec![register], now_ms());
        keys.create(&env.path("alpha.json")).unwrap();
        chain.serve(&node, &["acme/alpha"]);
        node.set(
            "POST",
            "/v1/transactions",
            503,
            r#"{"error":{"code":"busy","message":"mempool full"}}"#.into(),
        );
        let alpha = env.path("alpha.json");
        let cli = env.cli(&node, &["rotate", "--device", alpha.to_str().unwrap()]);
        assert!(output(&cli).is_err());
        let pending = DeviceKeys::load(&alpha).unwrap().pending_rotation.unwrap();
        assert_eq!(pending.signing.public(), keys.current.next_signing.public());
        let first_post = node.posted.lock().unwrap()[0].1.clone();
        assert!(output(&cli).is_err());
        let second_post = node.posted.lock().unwrap()[1].1.clone();
        assert_eq!(
            first_post, second_post,
            "a retry resubmits the same transaction"
        );
        // The posted transaction is a valid rotation to the committed key.
        let body: Value = serde_json::from_str(&first_post).unwrap();
        let tx = txs::from_hex(body["tx"].as_str().unwrap()).unwrap();
        chain.commit(vec![tx], now_ms());
    }

    #[test]
    fn revoke_by_admin_is_verified() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let (keys, register) = chain.new_device("alpha");
        chain.commit(vec![register], now_ms());
        chain.commit(
            vec![txs::revoke(
                CHAIN,
                &keys.name,
                "lost",
                Authority::Admin,
                &chain.admin.signing,
            )],
            now_ms(),
        );
        chain.serve(&node, &["acme/alpha"]);
        serve_tx_results(&chain, &node);
        chain.admin.create(&env.path("admin.json")).unwrap();
        let admin = env.path("admin.json");
        let cli = env.cli(
            &node,
            &[
                "revoke",
                "acme/alpha",
                "--reason",
                "lost",
                "--admin",
                admin.to_str().unwrap(),
            ],
        );
        let out = output(&cli).unwrap();
        assert!(
            out.text.contains("verified revoked at height 2"),
            "{}",
            out.text
        );
        let out = output(&env.cli(&node, &["lookup", "acme/alpha"])).unwrap();
        assert!(
            out.text.contains("REVOKED at height 2: lost"),
            "{}",
            out.text
        );
    }

    #[test]
    fn governance_files_collect_approvals_and_execute() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        chain.admin.create(&env.path("admin.json")).unwrap();
        let (admin, proposal) = (env.path("admin.json"), env.path("proposal.hex"));
        let new_admin = keyreg_consensus::crypto::SigningKey::from_seed([5; 32])
            .public()
            .to_hex();
        let cli = env.cli(
            &node,
            &[
                "governance",
                "propose",
                "--admin",
                admin.to_str().unwrap(),
                "--sequence",
                "0",
                "--out",
                proposal.to_str().unwrap(),
                "add-org",
                "globex",
                "--org-admin",
                &new_admin,
            ],
        );
        let out = output(&cli).unwrap();
        assert_eq!(out.json["signers"].as_array().unwrap().len(), 1);
        let cli = env.cli(
            &node,
            &[
                "governance",
                "approve",
                proposal.to_str().unwrap(),
                "--admin",
                admin.to_str().unwrap(),
            ],
        );
        assert_eq!(
            output(&cli).unwrap().json["signers"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "same admin: no new signature"
        );
        let tx = read_proposal(&proposal).unwrap();
        chain.commit(vec![tx], now_ms());
    }

    #[test]
    fn status_verifies_the_head_and_history_lists_a_devices_transactions() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let (keys, register) = chain.new_device("alpha");
        let (_, other) = chain.new_device("beta");
        // Strictly increasing block times, as validators enforce.
        let t0 = now_ms();
        chain.commit(vec![register], t0);
        chain.commit(vec![other], t0 + 1);
        let next = keys.current.successor().unwrap();
        chain.commit(vec![txs::rotate_device(CHAIN, &keys, &next, 0)], t0 + 2);
        chain.serve(&node, &["acme/alpha"]);
        serve_tx_results(&chain, &node);
        let genesis_hash = chain.genesis.hash().to_hex();
        node.set(
            "GET",
            "/v1/status",
            200,
            json!({"chain_id": CHAIN, "genesis_hash": genesis_hash, "height": 3, "head_hash": chain.blocks[&3].block.header.hash().to_hex(), "state_root": "",
                "epoch": 0, "validator_set": "", "peers": 3, "syncing": false, "is_validator": true, "mempool": 0})
            .to_string(),
        );
        let blocks: Vec<String> = chain
            .blocks
            .values()
            .map(|b| hex::encode(b.to_bytes()))
            .collect();
        node.set(
            "GET",
            "/v1/blocks?from=1&limit=3",
            200,
            json!({"blocks": blocks, "next": null}).to_string(),
        );

        let out = output(&env.cli(&node, &["status"])).unwrap();
        assert_eq!(out.json["verified_head"]["height"], 3);
        let out = output(&env.cli(&node, &["history", "acme/alpha"])).unwrap();
        let events = out.json["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0]["height"].as_u64(), events[0]["kind"].as_str()),
            (Some(1), Some("registered"))
        );
        assert_eq!(
            (events[1]["height"].as_u64(), events[1]["kind"].as_str()),
            (Some(3), Some("rotated"))
        );

        // A tampered block in the page fails the scan.
        let mut bad = chain.blocks[&2].clone();
        bad.block.transactions.clear();
        let mut tampered = blocks.clone();
        tampered[1] = hex::encode(bad.to_bytes());
        node.set(
            "GET",
            "/v1/blocks?from=1&limit=3",
            200,
            json!({"blocks": tampered, "next": null}).to_string(),
        );
        let err = output(&env.cli(&node, &["history", "acme/alpha"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("height 2"), "{err}");
    }

    #[test]
    fn pipe_connects_two_devices_through_the_cli() {
        let mut chain = Chain::new();
        let env = Env::new(&chain);
        let node = FakeNode::start();
        let (alpha, tx_a) = chain.new_device("alpha");
        let (beta, tx_b) = chain.new_device("beta");
        chain.commit(vec![tx_a, tx_b], now_ms());
        chain.serve(&node, &["acme/alpha", "acme/beta"]);
        alpha.create(&env.path("alpha.json")).unwrap();
        beta.create(&env.path("beta.json")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let beta_file = env.path("beta.json");
        let beta_cli = env.cli(&node, &["status"]);
        let beta_side = std::thread::spawn(move || {
            let mut light = beta_cli.light_client().unwrap();
            let config = SessionConfig::new(CHAIN);
            let (device, session) = listen(&mut light, &beta_file, &listener, &config)?;
            let mut received = Vec::new();
            let input = Box::new(std::io::Cursor::new(b"pong\n".to_vec()));
            run_session(&device, session, input, &mut received).map(|()| received)
        });
        let alpha_file = env.path("alpha.json");
        let connect = env.cli(
            &node,
            &[
                "session",
                "connect",
                "acme/beta",
                "--device",
                alpha_file.to_str().unwrap(),
                "--addr",
                &addr,
            ],
        );
        let Command::Session(command) = &connect.command else {
            unreachable!()
        };
        let mut received = Vec::new();
        let input = Box::new(std::io::Cursor::new(b"ping\nsecond\x07line\n".to_vec()));
        session(&connect, command, input, &mut received).unwrap();
        assert_eq!(String::from_utf8(received).unwrap(), "pong\n");
        let beta_received = beta_side.join().unwrap().unwrap();
        assert_eq!(
            String::from_utf8(beta_received).unwrap(),
            "ping\nsecond?line\n"
        );
    }
}
