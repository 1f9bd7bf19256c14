"""MLS exports into the comps store: column mapping, value forms, refusals, and Redis area queries."""

from __future__ import annotations

import io
from datetime import date

import pytest
import redis.asyncio as aioredis

from ghl_real_estate_ai.comps.mls_import import MlsFileError, read_mls_csv
from ghl_real_estate_ai.comps.store import RedisCompsStore
from ghl_real_estate_ai.conversation.cma import Subject

AS_OF = date(2026, 11, 1)

RESO_CSV = (
    "ListingKey,UnparsedAddress,City,StateOrProvince,PostalCode,Latitude,Longitude,StandardStatus,CloseDate,"
    "ClosePrice,LivingArea,BedroomsTotal,BathroomsTotalInteger,YearBuilt,PropertySubType\n"
    "K1,1 A St,Denver,CO,80203,39.7400,-104.9900,Closed,"
        "2026-09-01,600000,1800,3,2,1995,Single Family Residence\n"
    "K2,2 B St,Denver,CO,80203,39.7410,-104.9900,Closed,"
        "2026-08-01,610000,1850,3,2,1990,SingleFamilyResidence\n"
    "K3,3 C St,Denver,CO,80203,39.7420,-104.9900,Closed,"
        "2026-07-01,620000,1900,3,2,2000,Single Family Residence\n"
    "K4,4 D St,Denver,CO,80203,39.7430,-104.9900,Active,,,1900,3,2,2000,Single Family Residence\n"
    "K5,5 E St,Denver,CO,80203,39.7440,-104.9900,Closed,2026-06-01,300000,900,2,1,2010,Condominium\n"
    "K6,6 F St,Denver,CO,80203,39.7450,-104.9900,Closed,2026-06-01,500000,2400,4,2,1960,Duplex\n"
)

# ARMLS-style names, "$" prices, US dates, a BOM, and Matrix F.H baths ("2.1" = 2 full + 1 half).
EXPORT_CSV = (
    "\ufeffList Number,Status,Close of Escrow Date,Sold Price,Approx SQFT,# Bedrooms,Baths Total,Year Built,"
    "Geo Lat,Geo Lon,Zip Code,City,State,Address,Dwelling Type\n"
    'A1,C,09/15/2026,"$1,234,000","2,100",4,2.1,1999,33.50,'
        '-111.99,85018,Phoenix,AZ,1 Camelback Rd,Single Family - Detached\n'
    'A2,C,9/1/26,"$1,100,000","1,950",3,2.0,2001,33.51,-111.99,85018,Phoenix,AZ,2 Camelback Rd,SF\n'
    'A3,C,October-31-2025,"$990,000","1,900",3,3.2,1998,'
        '33.52,-111.99,85018,Phoenix,AZ,3 Camelback Rd,Townhouse\n'
)


def test_reso_names_both_lookup_forms_and_skips() -> None:
    imported = read_mls_csv(io.StringIO(RESO_CSV))
    assert [s.key for s in imported.sales] == ["mls:K1", "mls:K2", "mls:K3", "mls:K5"]
    assert [s.property_type for s in imported.sales] == ["single_family"] * 3 + ["condo"]
    assert imported.sales[0].year_built == 1995 and imported.sales[0].baths == 2.0
    assert imported.skipped == {"not a closed sale": 1, "a property type the CMA does not value": 1}


def test_common_export_variants() -> None:
    imported = read_mls_csv(io.StringIO(EXPORT_CSV))
    first, second, third = imported.sales
    assert (first.price, first.sqft, first.sold_on, first.baths) == (1_234_000, 2100, date(2026, 9, 15), 2.5)
    assert second.sold_on == date(2026, 9, 1) and second.baths == 2.0
    assert third.sold_on == date(2025, 10, 31) and third.baths == 4.0 and third.property_type == "townhouse"
    assert imported.columns["price"] == "Sold Price" and imported.columns["sold_on"] == "Close of Escrow Date"


def test_full_and_half_bath_columns_and_decimal_totals() -> None:
    text = ("Sale Price,Sold Date,SqFt Liv Area,#FBaths,#HBaths,Zip,Type of Property\n"
            "500000,2026-01-02,1500,2,1,33101,Condo\n")
    assert read_mls_csv(io.StringIO(text)).sales[0].baths == 2.5
    decimal = ("ClosePrice,CloseDate,LivingArea,BathroomsTotalDecimal,PostalCode,PropertySubType\n"
               "500000,2026-01-02,1500,2.5,33101,Condominium\n"
               "510000,2026-01-03,1500,1.75,33101,Condominium\n")
    assert [s.baths for s in read_mls_csv(io.StringIO(decimal)).sales] == [2.5, 1.75]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("CloseDate,LivingArea,PostalCode,PropertySubType\n2026-01-01,1500,80203,Condominium\n",
         "no ClosePrice column"),
        ("ClosePrice,LivingArea,PostalCode,PropertySubType\n1,1500,80203,Condominium\n",
         "no CloseDate column"),
        ("ClosePrice,CloseDate,PostalCode,PropertySubType\n1,2026-01-01,80203,Condominium\n",
         "no LivingArea column"),
        ("ClosePrice,CloseDate,LivingArea,PropertySubType\n1,2026-01-01,1500,Condominium\n",
         "no Latitude/Longitude columns and no PostalCode column"),
        ("ClosePrice,CloseDate,LivingArea,PostalCode,PropertySubType\n5e5,2026-01-01,1500,80203,Condominium\n"
         "abc,2026-01-01,1500,80203,Condominium\n", "line 3, column 'ClosePrice'"),
        ("ClosePrice,CloseDate,LivingArea,PostalCode,PropertySubType\n500000,someday,1500,80203,Condominium\n",
         "line 2, column 'CloseDate': unreadable date"),
        ("", "the file is empty"),
        ("ClosePrice,CloseDate,LivingArea,PostalCode,PropertySubType\n", "no closed sale to load"),
    ],
)
def test_a_file_that_cannot_be_mapped_is_refused_with_one_line(text: str, problem: str) -> None:
    with pytest.raises(MlsFileError, match=problem) as caught:
        read_mls_csv(io.StringIO(text))
    assert "\n" not in str(caught.value)


async def test_import_is_idempotent_and_queryable_by_area(redis_client: aioredis.Redis) -> None:
    store = RedisCompsStore(redis_client, prefix="test13:{comps}")
    sales = read_mls_csv(io.StringIO(RESO_CSV)).sales
    first = await store.import_sales(sales)
    assert (first.loaded, first.new, first.changed) == (4, 4, 0)
    before = {k: await redis_client.dump(k) async for k in redis_client.scan_iter(match="test13:*")}
    again = await store.import_sales(read_mls_csv(io.StringIO(RESO_CSV)).sales)
    assert (again.new, again.changed) == (0, 0)
    after = {k: await redis_client.dump(k) async for k in redis_client.scan_iter(match="test13:*")}
    assert after == before  # nothing changed
    assert await store.count() == 4

    near = Subject("9 Z St", lat=39.7400, lon=-104.9900)
    found = await store.area_sales(near, as_of=AS_OF, radius_miles=1.0)
    assert sorted(s.address for s in found) == ["1 A St", "2 B St", "3 C St"]
    assert await store.area_sales(near, as_of=date(2026, 8, 1), radius_miles=1.0) == [
        s for s in found if s.address == "3 C St"
    ]  # closed before as_of only
    by_zip = await store.area_sales(Subject("9 Z St", zip="80203", property_type="condo"), as_of=AS_OF)
    assert [s.address for s in by_zip] == ["5 E St"]
    by_city = await store.area_sales(Subject("9 Z St", city="Denver", state="CO"), as_of=AS_OF)
    assert len(by_city) == 3
    assert await store.area_sales(Subject("9 Z St", city="Boulder", state="CO"), as_of=AS_OF) == []


async def test_a_refused_file_loads_nothing(redis_client: aioredis.Redis) -> None:
    bad = RESO_CSV + "K9,9 Z St,Denver,CO,80203,39.7,-104.9,Closed,2026-09-01,lots,1800,3,2,1995,Condo\n"
    with pytest.raises(MlsFileError, match="line 8"):
        read_mls_csv(io.StringIO(bad))
    assert [k async for k in redis_client.scan_iter(match="test13:*")] == []
