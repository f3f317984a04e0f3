//! Cedar names the engine builds requests with, parsed once.

use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

use crate::error::PolicyError;

/// The Cedar namespace of every Gatehouse entity type and action.
pub const NAMESPACE: &str = "Gatehouse";

/// Entity type names and action ids, parsed once per engine.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) user: EntityTypeName,
    pub(crate) agent: EntityTypeName,
    pub(crate) group: EntityTypeName,
    pub(crate) target: EntityTypeName,
    pub(crate) database: EntityTypeName,
    pub(crate) host: EntityTypeName,
    pub(crate) table: EntityTypeName,
    pub(crate) column: EntityTypeName,
    pub(crate) connect: EntityUid,
    pub(crate) query: EntityUid,
    pub(crate) read_column: EntityUid,
}

impl Names {
    pub(crate) fn new() -> Result<Names, PolicyError> {
        let action = type_name("Action")?;
        let act = |id: &str| EntityUid::from_type_name_and_id(action.clone(), EntityId::new(id));
        Ok(Names {
            user: type_name("User")?,
            agent: type_name("Agent")?,
            group: type_name("Group")?,
            target: type_name("Target")?,
            database: type_name("Database")?,
            host: type_name("Host")?,
            table: type_name("Table")?,
            column: type_name("Column")?,
            connect: act("connect"),
            query: act("query"),
            read_column: act("read_column"),
        })
    }

    /// `Gatehouse::<ty>::"<id>"`.
    pub(crate) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }
}

fn type_name(basename: &str) -> Result<EntityTypeName, PolicyError> {
    EntityTypeName::from_str(&format!("{NAMESPACE}::{basename}")).map_err(|e| PolicyError::Session {
        message: format!("bad entity type name `{basename}`: {e}"),
    })
}
