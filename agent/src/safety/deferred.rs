//! The gate's verification without spending the approval: a nonce ledger that answers like the
//! journal (epoch, clock high-water, "already used") but only *remembers* the claim instead of
//! consuming it. The caller consumes the remembered claim in the journal once the safety copy
//! is verified and the config digest re-checked (`safety-nets.md` §6.1, order step 6); a copy
//! that fails leaves the nonce unspent, so the same signed approval still works next turn.

use std::sync::Mutex;

use gate::{NonceClaim, NonceLedger, NonceRefusal};

use crate::store::Store;

/// A ledger over the journal that defers `consume`.
pub struct DeferredLedger<'a> {
    store: &'a Store,
    claim: Mutex<Option<NonceClaim>>,
}

impl<'a> DeferredLedger<'a> {
    pub fn new(store: &'a Store) -> DeferredLedger<'a> {
        DeferredLedger {
            store,
            claim: Mutex::new(None),
        }
    }

    /// The claim the gate would have consumed (set once a verification passed every check).
    pub fn take_claim(&self) -> Option<NonceClaim> {
        self.claim.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl NonceLedger for DeferredLedger<'_> {
    fn state_epoch(&self) -> String {
        NonceLedger::state_epoch(self.store)
    }
    fn clock_high_water(&self) -> Option<i64> {
        NonceLedger::clock_high_water(self.store)
    }
    fn is_consumed(&self, nonce: &str) -> bool {
        NonceLedger::is_consumed(self.store, nonce)
    }
    fn consume(&self, claim: &NonceClaim) -> Result<(), NonceRefusal> {
        // A nonce already used is refused now, as the real ledger would; everything else is
        // decided by the real `consume` after the copy.
        if NonceLedger::is_consumed(self.store, &claim.nonce) {
            return Err(NonceRefusal::Replayed);
        }
        *self.claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(claim.clone());
        Ok(())
    }
}
