//! The `keyreg-node` command line: `init`, `start`, `dev`, `testnet`, `export`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use keyreg_consensus::codec::Canonical;
use keyreg_consensus::sealed::configured_passphrase;
use keyreg_consensus::SigningKey;
use keyreg_registry::{Genesis, GenesisOrg, Ledger, OrgId, ValidatorInfo};

use crate::config::{Config, Overrides, CONFIG_FILE, DATA_DIR, GENESIS_FILE, KEY_FILE};
use crate::keys::{read_key_file, write_admin_key_file, write_key_file};
use crate::network::peer_id_of;
use crate::node::{self, Store};

/// The organisation `dev` and `testnet` create, with its admin key file.
pub const DEMO_ORG: &str = "demo";
pub const DEMO_ADMIN_KEY_FILE: &str = "demo-admin.key";

#[derive(Parser, Debug)]
#[command(name = "keyreg-node", version, about = "keyreg consortium node")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a node home: a fresh key (0600) and a default config.
    Init {
        #[arg(long, env = "KEYREG_HOME")]
        home: PathBuf,
        /// Copy this genesis file into the home.
        #[arg(long)]
        genesis: Option<PathBuf>,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Run the node in HOME.
    Start {
        #[arg(long, env = "KEYREG_HOME")]
        home: PathBuf,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// A single-validator development chain with a demo organisation.
    Dev {
        #[arg(long, env = "KEYREG_HOME", default_value = ".keyreg-dev")]
        home: PathBuf,
        #[arg(long, env = "KEYREG_API_LISTEN", default_value = "127.0.0.1:8080")]
        api: SocketAddr,
    },
    /// Generate a genesis and node homes OUT/node0.. for a local or docker testnet.
    Testnet {
        #[arg(long)]
        validators: usize,
        #[arg(long, default_value_t = 0)]
        observers: usize,
        #[arg(long)]
        out: PathBuf,
        /// First libp2p port (loopback: node i listens on base + i).
        #[arg(long, default_value_t = 26656)]
        base_port: u16,
        /// First API port (loopback: node i serves on api_base + i).
        #[arg(long, default_value_t = 8080)]
        api_base_port: u16,
        /// Host of node i; `{i}` is replaced by i. With `{i}` (e.g. "node{i}"
        /// for docker) every node uses the base ports on its own host and
        /// listens on 0.0.0.0.
        #[arg(long, default_value = "127.0.0.1")]
        host_template: String,
        #[arg(long, default_value = "keyreg-testnet")]
        chain_id: String,
    },
    /// Write every committed block to FILE for offline audit (node stopped).
    Export {
        #[arg(long, env = "KEYREG_HOME")]
        home: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Settings that override `config.toml` (flag, then `KEYREG_*` variable).
#[derive(Args, Debug, Default, Clone)]
pub struct OverrideArgs {
    /// libp2p listen multiaddr, e.g. /ip4/0.0.0.0/tcp/26656
    #[arg(long, env = "KEYREG_P2P_LISTEN")]
    pub p2p_listen: Option<String>,
    /// HTTP API listen address, e.g. 127.0.0.1:8080
    #[arg(long, env = "KEYREG_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Comma-separated multiaddrs ending in /p2p/<peer id>
    #[arg(long, env = "KEYREG_PERSISTENT_PEERS", value_delimiter = ',')]
    pub persistent_peers: Option<Vec<String>>,
    /// File holding the passphrase of a sealed node.key (mode 0600); `init`
    /// seals the new key when a passphrase is given here or in KEYREG_PASSPHRASE.
    #[arg(long, env = "KEYREG_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl From<OverrideArgs> for Overrides {
    fn from(a: OverrideArgs) -> Self {
        Overrides {
            p2p_listen: a.p2p_listen,
            persistent_peers: a.persistent_peers,
            api_listen: a.api_listen,
            passphrase_file: a.passphrase_file,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            home,
            genesis,
            overrides,
        } => init(&home, genesis.as_deref(), overrides.into()),
        Command::Start { home, overrides } => {
            let mut config = Config::load(&home)?;
            config.apply(overrides.into())?;
            run_until_signal(&home, config).await
        }
        Command::Dev { home, api } => dev(&home, api).await,
        Command::Testnet {
            validators,
            observers,
            out,
            base_port,
            api_base_port,
            host_template,
            chain_id,
        } => {
            let spec = TestnetSpec {
                validators,
                observers,
                base_port,
                api_base_port,
                host_template,
                chain_id,
            };
            let nodes = generate_testnet(&spec, &out)?;
            for n in &nodes {
                println!(
                    "{}  {}  p2p {}  api {}",
                    n.home.display(),
                    if n.validator {
                        "validator"
                    } else {
                        "observer "
                    },
                    n.p2p_address,
                    n.api_listen
                );
            }
            println!(
                "genesis: {}\nadmin key of org {DEMO_ORG:?}: {}\nstart each node with: keyreg-node start --home <dir>",
                out.join(GENESIS_FILE).display(),
                out.join(DEMO_ADMIN_KEY_FILE).display()
            );
            Ok(())
        }
        Command::Export { home, out } => {
            let genesis = std::fs::read_to_string(home.join(GENESIS_FILE))
                .with_context(|| format!("reading {}", home.join(GENESIS_FILE).display()))?;
            let genesis = Genesis::from_json(&genesis)?;
            let store = Store::open(&home.join(DATA_DIR))
                .context("opening the ledger (is the node still running?)")?;
            let ledger = Ledger::open(store, &genesis)?;
            let height = crate::export::export(&ledger, &out)?;
            println!("exported blocks 1..={height} to {}", out.display());
            Ok(())
        }
    }
}

fn init(home: &Path, genesis: Option<&Path>, overrides: Overrides) -> anyhow::Result<()> {
    if home.join(CONFIG_FILE).exists() {
        bail!("{} already has a {CONFIG_FILE}", home.display());
    }
    std::fs::create_dir_all(home)?;
    let key = SigningKey::generate()?;
    let mut config = Config::default();
    config.apply(overrides)?;
    let passphrase = configured_passphrase(config.keys.passphrase_file.as_deref())?;
    write_key_file(&home.join(KEY_FILE), &key, passphrase.as_ref())?;
    config.save(home)?;
    if let Some(genesis) = genesis {
        std::fs::copy(genesis, home.join(GENESIS_FILE))
            .with_context(|| format!("copying {}", genesis.display()))?;
    }
    println!(
        "initialised {}\n  public key: {}\n  peer id:    {}\nput the public key in the genesis (or a SetValidators proposal), then: keyreg-node start --home {}",
        home.display(),
        key.public(),
        peer_id_of(&key.public())?,
        home.display()
    );
    Ok(())
}

/// Runs a node until SIGINT or SIGTERM, then stops it cleanly.
async fn run_until_signal(home: &Path, config: Config) -> anyhow::Result<()> {
    let mut node = node::start(home, config).await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        result = node.wait_driver() => {
            result?;
            bail!("consensus driver stopped unexpectedly");
        }
    }
    node.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn dev(home: &Path, api: SocketAddr) -> anyhow::Result<()> {
    if !home.join(CONFIG_FILE).exists() {
        std::fs::create_dir_all(home)?;
        let key = SigningKey::generate()?;
        let admin = SigningKey::generate()?;
        write_key_file(&home.join(KEY_FILE), &key, None)?;
        write_admin_key_file(&home.join(DEMO_ADMIN_KEY_FILE), DEMO_ORG, &admin)?;
        let genesis = genesis_for(
            "keyreg-dev",
            vec![ValidatorInfo::new(key.public(), 1, "/ip4/127.0.0.1/tcp/0")],
            &admin,
        )?;
        std::fs::write(home.join(GENESIS_FILE), genesis.to_json())?;
        let mut config = Config::default();
        config.p2p.listen = "/ip4/127.0.0.1/tcp/0".into();
        config.consensus.timeout_propose_ms = 500;
        config.save(home)?;
    }
    let mut config = Config::load(home)?;
    config.api.listen = api;
    let node = node::start(home, config).await?;
    let url = format!("http://{}", node.api_addr);
    let admin = home.join(DEMO_ADMIN_KEY_FILE);
    let genesis = home.join(GENESIS_FILE);
    println!(
        "keyreg dev chain running: API {url}, ledger in {data}\n\
         organisation {DEMO_ORG:?}, admin key {admin}\n\
         try:\n  \
         export KEYREG_NODE={url} KEYREG_GENESIS={genesis}\n  \
         keyreg keygen device {DEMO_ORG}/sensor-1 --out sensor-1.key\n  \
         keyreg register --admin {admin} --device sensor-1.key\n  \
         keyreg lookup {DEMO_ORG}/sensor-1\n  \
         keyreg rotate --device sensor-1.key\n  \
         keyreg revoke {DEMO_ORG}/sensor-1 --reason retired --admin {admin}\n  \
         keyreg audit\n\
         stop with Ctrl-C; the chain persists in {home} (delete it to start over)",
        data = home.join(DATA_DIR).display(),
        admin = admin.display(),
        genesis = genesis.display(),
        home = home.display()
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    node.stop().await?;
    Ok(())
}

/// A genesis with `validators` and one organisation, [`DEMO_ORG`], whose
/// admin is `admin`; the demo org alone meets the governance threshold.
fn genesis_for(
    chain_id: &str,
    validators: Vec<ValidatorInfo>,
    admin: &SigningKey,
) -> anyhow::Result<Genesis> {
    let mut genesis = Genesis {
        version: Genesis::VERSION,
        chain_id: chain_id.to_string(),
        genesis_time_ms: node::now_ms(),
        governance_threshold: 1,
        validators,
        organisations: vec![GenesisOrg {
            id: OrgId::new(DEMO_ORG)?,
            admins: vec![admin.public()],
        }],
    };
    genesis.normalise();
    genesis.validate()?;
    Ok(genesis)
}

#[derive(Clone, Debug)]
pub struct TestnetSpec {
    pub validators: usize,
    pub observers: usize,
    pub base_port: u16,
    pub api_base_port: u16,
    pub host_template: String,
    pub chain_id: String,
}

/// One generated node home.
#[derive(Clone, Debug)]
pub struct TestnetNode {
    pub home: PathBuf,
    pub validator: bool,
    pub p2p_address: String,
    pub api_listen: SocketAddr,
}

fn multiaddr_of(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => format!("/ip4/{ip}/tcp/{port}"),
        Ok(IpAddr::V6(ip)) => format!("/ip6/{ip}/tcp/{port}"),
        Err(_) => format!("/dns4/{host}/tcp/{port}"),
    }
}

/// Writes `out/genesis.json`, `out/demo-admin.key` and `out/node<i>/` homes
/// (validators first, then observers).
pub fn generate_testnet(spec: &TestnetSpec, out: &Path) -> anyhow::Result<Vec<TestnetNode>> {
    if spec.validators == 0 {
        bail!("a testnet needs at least one validator");
    }
    let total = spec.validators + spec.observers;
    let per_host = spec.host_template.contains("{i}");
    if !per_host && usize::from(u16::MAX - spec.base_port.max(spec.api_base_port)) < total {
        bail!("not enough ports above the base ports for {total} nodes");
    }
    std::fs::create_dir_all(out)?;
    let keys = (0..total)
        .map(|_| SigningKey::generate())
        .collect::<Result<Vec<_>, _>>()?;
    let admin = SigningKey::generate()?;
    let mut nodes = Vec::with_capacity(total);
    for i in 0..total {
        let host = spec.host_template.replace("{i}", &i.to_string());
        // Fits: checked above.
        let offset = if per_host { 0 } else { i as u16 };
        let (p2p_port, api_port) = (spec.base_port + offset, spec.api_base_port + offset);
        let bind_ip: IpAddr = if per_host {
            IpAddr::from([0, 0, 0, 0])
        } else {
            host.parse()
                .with_context(|| format!("host {host:?} must be an IP without {{i}}"))?
        };
        nodes.push(TestnetNode {
            home: out.join(format!("node{i}")),
            validator: i < spec.validators,
            p2p_address: multiaddr_of(&host, p2p_port),
            api_listen: SocketAddr::new(bind_ip, api_port),
        });
    }
    let validators = nodes
        .iter()
        .zip(&keys)
        .filter(|(n, _)| n.validator)
        .map(|(n, k)| ValidatorInfo::new(k.public(), 1, &n.p2p_address))
        .collect();
    let genesis = genesis_for(&spec.chain_id, validators, &admin)?;
    std::fs::write(out.join(GENESIS_FILE), genesis.to_json())?;
    write_admin_key_file(&out.join(DEMO_ADMIN_KEY_FILE), DEMO_ORG, &admin)?;
    let observer_keys: Vec<_> = keys
        .iter()
        .skip(spec.validators)
        .map(|k| k.public())
        .collect();
    for (i, (node, key)) in nodes.iter().zip(&keys).enumerate() {
        std::fs::create_dir_all(&node.home)?;
        write_key_file(&node.home.join(KEY_FILE), key, None)?;
        std::fs::write(node.home.join(GENESIS_FILE), genesis.to_json())?;
        let mut config = Config::default();
        config.p2p.listen = if per_host {
            format!("/ip4/0.0.0.0/tcp/{}", spec.base_port)
        } else {
            node.p2p_address.clone()
        };
        config.p2p.persistent_peers = nodes
            .iter()
            .zip(&keys)
            .enumerate()
            .filter(|(j, (n, _))| *j != i && n.validator)
            .map(|(_, (n, k))| -> anyhow::Result<String> {
                Ok(format!(
                    "{}/p2p/{}",
                    n.p2p_address,
                    peer_id_of(&k.public())?
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        config.p2p.observer_keys = observer_keys.clone();
        config.api.listen = node.api_listen;
        config.check()?;
        config.save(&node.home)?;
    }
    Ok(nodes)
}

/// The node key in `home` (for tools and tests; a sealed key's passphrase
/// comes from the environment).
pub fn node_key(home: &Path) -> anyhow::Result<SigningKey> {
    Ok(read_key_file(&home.join(KEY_FILE), None)?)
}
