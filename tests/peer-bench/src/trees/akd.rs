//! The `akd` crate (Meta's auditable key directory), set up as its docs
//! show: `AsyncInMemoryDatabase` behind `StorageManager::new_no_cache`, the
//! hard-coded test VRF key, and `ExperimentalConfiguration` (BLAKE3). Its
//! async API runs on a current-thread tokio runtime, with akd's parallel VRF
//! feature and azks parallelism off, so it gets one core like the others.
//!
//! Not the same object as the other two: a label's every version is a leaf
//! of an append-only tree at a VRF-derived position, an update adds leaves
//! (nothing is pruned), and a lookup proof carries three VRF proofs, two
//! membership proofs and one non-membership proof. akd has no lookup proof
//! for an absent label.

use akd::append_only_zks::AzksParallelismConfig;
use akd::directory::Directory;
use akd::ecvrf::HardCodedAkdVRF;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::storage::StorageManager;
use akd::{AkdLabel, AkdValue, DomainLabel, EpochHash, ExperimentalConfiguration, LookupProof};
use anyhow::{anyhow, bail, Result};
use protobuf::Message;
use tokio::runtime::Runtime;

use super::{Key, Tree};

#[derive(Clone)]
pub struct BenchLabel;

impl DomainLabel for BenchLabel {
    fn domain_label() -> &'static [u8] {
        b"keyreg-peer-bench"
    }
}

type Config = ExperimentalConfiguration<BenchLabel>;

pub struct AkdTree {
    runtime: Runtime,
    directory: Directory<Config, AsyncInMemoryDatabase, HardCodedAkdVRF>,
    vrf_public_key: Vec<u8>,
    latest: Option<EpochHash>,
}

impl AkdTree {
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let storage = StorageManager::new_no_cache(AsyncInMemoryDatabase::new());
        let (directory, vrf_public_key) = runtime.block_on(async {
            let directory = Directory::<Config, _, _>::new(
                storage,
                HardCodedAkdVRF {},
                AzksParallelismConfig::disabled(),
            )
            .await?;
            let key = directory.get_public_key().await?;
            Ok::<_, akd::errors::AkdError>((directory, key.as_bytes().to_vec()))
        })?;
        Ok(AkdTree {
            runtime,
            directory,
            vrf_public_key,
            latest: None,
        })
    }
}

impl Tree for AkdTree {
    type Proof = LookupProof;

    fn name(&self) -> &'static str {
        "akd"
    }

    fn commit(&mut self, batch: Vec<(Key, Vec<u8>)>) -> Result<()> {
        let updates = batch
            .into_iter()
            .map(|(key, value)| (AkdLabel(key.to_vec()), AkdValue(value)))
            .collect();
        self.latest = Some(self.runtime.block_on(self.directory.publish(updates))?);
        Ok(())
    }

    fn prove(&self, key: &Key) -> Result<(Option<Vec<u8>>, LookupProof)> {
        match self
            .runtime
            .block_on(self.directory.lookup(AkdLabel(key.to_vec())))
        {
            Ok((proof, _)) => Ok((Some(proof.value.0.clone()), proof)),
            Err(e) => bail!("akd lookup: {e}"),
        }
    }

    fn proves_absence(&self) -> bool {
        false
    }

    fn verify(&self, key: &Key, value: Option<&[u8]>, proof: LookupProof) -> Result<()> {
        let latest = self
            .latest
            .as_ref()
            .ok_or_else(|| anyhow!("nothing published yet"))?;
        let Some(value) = value else {
            bail!("akd has no non-membership lookup proof");
        };
        let result = akd::client::lookup_verify::<Config>(
            &self.vrf_public_key,
            latest.hash(),
            latest.epoch(),
            AkdLabel(key.to_vec()),
            proof,
        )
        .map_err(|e| anyhow!("akd lookup_verify: {e}"))?;
        if result.value.0 != value {
            bail!("akd proof verified for another value");
        }
        Ok(())
    }

    fn proof_len(&self, proof: &LookupProof) -> Result<usize> {
        Ok(akd::proto::specs::types::LookupProof::from(proof)
            .write_to_bytes()?
            .len())
    }

    fn proof_encoding(&self) -> &'static str {
        "protobuf (akd's own specs::types::LookupProof)"
    }
}
