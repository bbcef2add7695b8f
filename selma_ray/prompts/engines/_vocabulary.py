"""Vocabulary of the offline scene-graph prompt engine: nouns, attributes, places, verbs, rules.

Everything here is plain data plus the small queries the composer in ``scene_graph`` needs.
Nouns are written one per line as ``|``-separated fields and parsed at import:

* things:  ``name|plural|size|tags|materials|colours`` (colours ``*`` = the everyday palette)
* animals: ``name|plural|size|tags|colours``
* people:  ``name|plural|tags|pronoun``
* places:  ``name|preposition|article|tags``

Tags mix *domains* (where a noun is usually found: kitchen, street, beach ...) with
*capabilities* (hold, surface, container, food, ride ...). A thing fits a place when they share
a domain. ``WHOOPS_RULES`` / :func:`defies` say which pairings defy common sense.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SIZES = ("xs", "s", "m", "l", "xl")
SIZE_RANK = {s: i for i, s in enumerate(SIZES)}

_DOMAIN_LIST = (
    "home", "kitchen", "living", "bedroom", "bath", "office", "school", "restaurant", "shop",
    "workshop", "street", "travel", "park", "garden", "beach", "water", "farm", "wild",
    "snow", "sport", "desert",
)  # fmt: skip
DOMAINS = frozenset(_DOMAIN_LIST)

PALETTE = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "grey",
    "brown", "beige", "turquoise", "navy blue", "dark green", "light blue", "maroon", "teal",
    "lavender", "cream-colored",
)  # fmt: skip

# material noun -> adjective used before a noun
MATERIALS: dict[str, str] = {
    "wood": "wooden", "metal": "metal", "glass": "glass", "plastic": "plastic",
    "ceramic": "ceramic", "porcelain": "porcelain", "paper": "paper", "cardboard": "cardboard",
    "leather": "leather", "wool": "woolen", "cotton": "cotton", "silk": "silk", "linen": "linen",
    "velvet": "velvet", "denim": "denim", "wicker": "wicker", "straw": "straw",
    "bamboo": "bamboo", "stone": "stone", "marble": "marble", "brick": "brick", "clay": "clay",
    "steel": "steel", "iron": "iron", "copper": "copper", "brass": "brass", "silver": "silver",
    "gold": "golden", "bronze": "bronze", "rubber": "rubber", "canvas": "canvas",
    "nylon": "nylon", "aluminum": "aluminum", "crystal": "crystal", "wax": "wax", "felt": "felt",
    "cashmere": "cashmere", "sand": "sand", "fabric": "fabric", "plush": "plush", "foam": "foam",
}  # fmt: skip

METALS = frozenset(["metal", "steel", "iron", "copper", "brass", "aluminum"])
SHINY = frozenset(
    ("metal", "steel", "copper", "brass", "silver", "gold", "glass", "crystal", "porcelain",
     "marble")
)  # fmt: skip
PATTERNABLE = frozenset(
    ("cotton", "silk", "wool", "linen", "velvet", "ceramic", "porcelain", "paper", "canvas",
     "nylon")
)  # fmt: skip
PATTERNS = ("striped", "checkered", "polka-dot", "floral", "plaid")

SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "xs": ("tiny", "small", "little"),
    "s": ("small", "tiny", "little", "large"),
    "m": ("small", "large", "big"),
    "l": ("large", "big", "huge"),
    "xl": ("huge", "giant", "enormous"),
}

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)  # fmt: skip


@dataclass(frozen=True)
class Noun:
    """One countable thing, animal, person or place of the vocabulary."""

    name: str
    plural: str
    kind: str  # thing | animal | person | place
    size: str = "m"
    tags: frozenset[str] = frozenset()
    materials: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    pronoun: str = "it"  # him | her | them | it
    prep: str = ""  # places: "in", "on", "at", "at the bottom of" ...
    article: str = "a"  # places: "a", "the" or "" (no article: "outer space")
    all_tags: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all_tags", self.tags | {self.kind, self.name})

    def has(self, *tags: str) -> bool:
        """Whether any of ``tags`` is one of its tags, its kind or its name."""
        return any(t in self.all_tags for t in tags)

    @property
    def domains(self) -> frozenset[str]:
        return self.tags & DOMAINS


def _split(field: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in field.split(",") if x.strip())


def _colors(field: str) -> tuple[str, ...]:
    return PALETTE if field.strip() == "*" else _split(field)


def _lines(block: str) -> list[list[str]]:
    rows = []
    for line in block.strip().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append([p.strip() for p in line.split("|")])
    return rows


def _things(block: str) -> tuple[Noun, ...]:
    out = []
    for name, plural, size, tags, materials, colors in _lines(block):
        out.append(
            Noun(name, plural, "thing", size, frozenset(_split(tags)), _split(materials),
                 _colors(colors))
        )  # fmt: skip
    return tuple(out)


def _animals(block: str) -> tuple[Noun, ...]:
    out = []
    for name, plural, size, tags, colors in _lines(block):
        out.append(
            Noun(name, plural, "animal", size, frozenset({"animal", *_split(tags)}), (),
                 _colors(colors))
        )  # fmt: skip
    return tuple(out)


def _people(block: str) -> tuple[Noun, ...]:
    out = []
    for name, plural, tags, pronoun in _lines(block):
        tag_set = frozenset({"person", *_split(tags)})
        size = "s" if "baby" in tag_set else "m"
        out.append(Noun(name, plural, "person", size, tag_set, pronoun=pronoun))
    return tuple(out)


def _places(block: str) -> tuple[Noun, ...]:
    out = []
    for name, prep, article, tags in _lines(block):
        out.append(
            Noun(name, name + "s", "place", "xl", frozenset(_split(tags)), prep=prep,
                 article="" if article == "-" else article)
        )  # fmt: skip
    return tuple(out)


# --- things -----------------------------------------------------------------------------------
# size: xs < s < m < l < xl. Capability tags: hold (a person can hold it), surface / small_surface
# (things can be put on it), container, seat, soft (can lie on it), shelter (things go under it),
# lean (leans against things), hang (hangs on a wall / above), openable, lightable, fluffy,
# food, fruit, veg, dessert, bread, meal, read, instrument, ride, drive, push, wear, tool,
# utensil, electronic, typeable, phone, ball, toy, plant, burn, ice, heavy, land_vehicle, boat,
# aircraft, tiny_container, drink_vessel, paintable, washable, climbable, fixed, building.
THINGS = _things(
    """
cup|cups|s|hold,container,drink_vessel,kitchen,home,office,restaurant|ceramic,glass,plastic,paper|*
mug|mugs|s|hold,container,drink_vessel,kitchen,home,office,tiny_container|ceramic,glass,metal|*
teacup|teacups|s|hold,container,drink_vessel,kitchen,restaurant,tiny_container|porcelain,ceramic|*
drinking glass|drinking glasses|s|hold,container,drink_vessel,kitchen,restaurant|glass|
wine glass|wine glasses|s|hold,container,drink_vessel,restaurant,tiny_container|glass,crystal|
bottle|bottles|s|hold,container,kitchen,restaurant,beach,park|glass,plastic|green,brown,blue
jar|jars|s|hold,container,kitchen,shop|glass,ceramic,clay|
bowl|bowls|s|hold,container,kitchen,restaurant|ceramic,wood,glass,metal|*
plate|plates|s|hold,small_surface,kitchen,restaurant,washable|ceramic,porcelain,paper,metal|*
teapot|teapots|s|hold,container,kitchen,home,restaurant|ceramic,porcelain,metal,clay|*
kettle|kettles|s|hold,kitchen,home|metal,steel,plastic|*
frying pan|frying pans|s|hold,small_surface,kitchen,washable|metal,steel,iron|black,grey,red
cooking pot|cooking pots|m|hold,container,kitchen,washable|metal,steel,copper|black,silver,red
spoon|spoons|xs|hold,utensil,kitchen,restaurant|metal,silver,wood,plastic|
fork|forks|xs|hold,utensil,kitchen,restaurant|metal,silver,plastic|
knife|knives|xs|hold,utensil,kitchen,restaurant|steel,metal|
ladle|ladles|s|hold,utensil,kitchen|metal,wood|
spatula|spatulas|s|hold,utensil,kitchen|metal,wood,plastic|*
whisk|whisks|s|hold,utensil,kitchen|metal|
cutting board|cutting boards|s|hold,small_surface,kitchen|wood,bamboo,plastic|
tray|trays|s|hold,small_surface,kitchen,restaurant|wood,metal,plastic|*
basket|baskets|s|hold,container,kitchen,garden,shop,farm,park|wicker,straw|brown,white,red
lunch box|lunch boxes|s|hold,container,school,tiny_container,openable|plastic,metal|*
toaster|toasters|s|kitchen,electronic|metal,plastic|*
microwave|microwaves|m|kitchen,electronic,office,openable|metal,plastic|white,black,silver
refrigerator|refrigerators|l|kitchen,electronic,heavy,openable|metal|white,silver,red
oven|ovens|l|kitchen,heavy,openable|metal,steel|white,black,silver
blender|blenders|s|kitchen,electronic|glass,plastic|*
coffee machine|coffee machines|m|kitchen,office,electronic|metal,plastic|black,silver,red
kitchen sink|kitchen sinks|l|kitchen,fixed|metal,ceramic,stone|white,silver
salt shaker|salt shakers|xs|hold,kitchen,restaurant|glass,ceramic|
napkin|napkins|xs|hold,kitchen,restaurant|paper,cotton,linen|*
apron|aprons|s|hold,wear,kitchen|cotton,linen,denim|*
apple|apples|xs|hold,food,fruit,kitchen,farm,shop,garden||red,green,yellow
banana|bananas|xs|hold,food,fruit,kitchen,shop||yellow,green
orange|oranges|xs|hold,food,fruit,kitchen,shop||orange
lemon|lemons|xs|hold,food,fruit,kitchen,shop||yellow
pear|pears|xs|hold,food,fruit,kitchen,garden||green,yellow
peach|peaches|xs|hold,food,fruit,kitchen,shop||orange,yellow
plum|plums|xs|hold,food,fruit,kitchen||purple,red
strawberry|strawberries|xs|hold,food,fruit,kitchen,garden||red
watermelon|watermelons|s|hold,food,fruit,kitchen,beach,farm||green
pineapple|pineapples|s|hold,food,fruit,kitchen,beach||
coconut|coconuts|xs|hold,food,fruit,beach||brown
avocado|avocados|xs|hold,food,fruit,kitchen||green
mango|mangoes|xs|hold,food,fruit,kitchen,shop||yellow,orange,green
tomato|tomatoes|xs|hold,food,veg,kitchen,garden,farm,shop||red,yellow,green
carrot|carrots|xs|hold,food,veg,kitchen,garden,farm||orange
potato|potatoes|xs|hold,food,veg,kitchen,farm||brown
onion|onions|xs|hold,food,veg,kitchen||red,white,purple
pumpkin|pumpkins|s|food,veg,farm,garden,kitchen||orange
cucumber|cucumbers|xs|hold,food,veg,kitchen,garden||green
eggplant|eggplants|xs|hold,food,veg,kitchen,garden||purple
bell pepper|bell peppers|xs|hold,food,veg,kitchen||red,yellow,green
mushroom|mushrooms|xs|food,veg,kitchen,wild||brown,white
egg|eggs|xs|hold,food,kitchen,farm||white,brown
loaf of bread|loaves of bread|s|hold,food,bread,kitchen,shop||
baguette|baguettes|s|hold,food,bread,kitchen,shop||
croissant|croissants|xs|hold,food,bread,kitchen,restaurant||
bagel|bagels|xs|hold,food,bread,kitchen||
sandwich|sandwiches|xs|hold,food,meal,kitchen,restaurant,park,school||
pizza|pizzas|s|food,meal,kitchen,restaurant||
hamburger|hamburgers|xs|hold,food,meal,restaurant,street||
hot dog|hot dogs|xs|hold,food,meal,street,park,sport||
donut|donuts|xs|hold,food,dessert,kitchen,shop,office||pink,brown
cupcake|cupcakes|xs|hold,food,dessert,kitchen,shop||pink,white
cake|cakes|s|food,dessert,kitchen,restaurant||white,pink,brown
cookie|cookies|xs|hold,food,dessert,kitchen||
pie|pies|s|food,dessert,kitchen||
muffin|muffins|xs|hold,food,dessert,kitchen,shop||
pretzel|pretzels|xs|hold,food,street,shop||
ice cream cone|ice cream cones|xs|hold,food,dessert,ice,beach,park,street||pink,white,brown
popsicle|popsicles|xs|hold,food,dessert,ice,beach,park||red,orange,green
ice cube|ice cubes|xs|ice,kitchen||
table|tables|l|surface,shelter,furniture,kitchen,home,restaurant,office,garden,paintable|\
wood,glass,metal,plastic,marble|*
dining table|dining tables|l|surface,shelter,furniture,kitchen,home,restaurant|wood,glass,marble|
coffee table|coffee tables|m|surface,furniture,home,living|wood,glass,marble|
picnic table|picnic tables|l|surface,shelter,furniture,park,garden,beach|wood,metal|
desk|desks|l|surface,shelter,furniture,office,school,home,bedroom|wood,metal|*
chair|chairs|m|seat,shelter,furniture,home,kitchen,office,school,restaurant,garden,paintable|\
wood,metal,plastic,wicker|*
armchair|armchairs|l|seat,soft,furniture,home,living|leather,velvet,fabric|*
sofa|sofas|l|seat,soft,surface,furniture,home,living,heavy|leather,velvet,fabric|*
couch|couches|l|seat,soft,surface,furniture,home,living,heavy|leather,velvet,fabric|*
bench|benches|l|seat,surface,shelter,park,street,garden,sport,paintable|wood,metal,stone|*
stool|stools|m|seat,furniture,kitchen,restaurant,workshop|wood,metal|*
bed|beds|l|soft,surface,furniture,bedroom,heavy|wood,metal|
bookshelf|bookshelves|l|surface,furniture,home,office,school,living|wood,metal|*
shelf|shelves|m|surface,furniture,home,kitchen,shop,workshop|wood,metal,glass|*
cabinet|cabinets|l|surface,furniture,kitchen,home,office,openable,paintable|wood,metal|*
dresser|dressers|l|surface,furniture,bedroom,paintable|wood|*
nightstand|nightstands|m|surface,furniture,bedroom|wood|*
wardrobe|wardrobes|l|furniture,bedroom,heavy,openable|wood|*
kitchen counter|kitchen counters|l|surface,kitchen,fixed|marble,stone,wood|
windowsill|windowsills|m|surface,home,kitchen,bedroom,fixed|wood,stone,marble|white
fireplace|fireplaces|l|burn,home,living,fixed|stone,brick|
rug|rugs|m|soft,surface,fluffy,home,living,bedroom|wool,cotton|*
cushion|cushions|s|hold,soft,fluffy,home,living|velvet,cotton,wool|*
pillow|pillows|s|hold,soft,fluffy,bedroom,home|cotton,silk|*
blanket|blankets|m|hold,soft,fluffy,bedroom,home,park|wool,cotton|*
lamp|lamps|s|lightable,electronic,home,office,bedroom,living|metal,glass,ceramic|*
chandelier|chandeliers|m|hang,home,restaurant|crystal,metal,glass|
mirror|mirrors|m|hang,home,bath,bedroom,shop|glass|
clock|clocks|s|hang,home,office,school,kitchen|wood,metal,plastic|*
picture frame|picture frames|s|hold,home,office|wood,metal,silver,gold|*
painting|paintings|m|hang,home,office,restaurant,living||
vase|vases|s|hold,container,home,kitchen,restaurant,living|glass,ceramic,porcelain,clay|*
candle|candles|xs|hold,burn,lightable,home,restaurant|wax|white,red,pink,yellow
potted plant|potted plants|s|plant,home,office,garden,living|ceramic,clay|
cactus|cacti|s|plant,warm_plant,desert,home,office||green
curtain|curtains|m|home,bedroom,living|silk,cotton,linen,velvet|*
window|windows|l|home,fixed,openable,washable|glass,wood|
door|doors|l|home,street,fixed,openable,paintable|wood,metal,glass|*
television|televisions|m|electronic,home,living|plastic,metal|black,silver
laptop|laptops|s|hold,electronic,typeable,openable,office,school,home,restaurant|\
metal,plastic|silver,black,grey
computer|computers|m|electronic,typeable,office,school|plastic,metal|black,white,silver
keyboard|keyboards|s|hold,electronic,typeable,office|plastic,metal|black,white
cell phone|cell phones|xs|hold,electronic,phone,office,street,home|plastic,metal,glass|\
black,white,silver,pink
smartphone|smartphones|xs|hold,electronic,phone,office,street,home,park|metal,glass|\
black,white,silver,blue
tablet|tablets|s|hold,electronic,office,school,home|metal,glass|black,silver
camera|cameras|s|hold,electronic,street,park,beach,travel|metal,plastic|black,silver
radio|radios|s|hold,electronic,home,workshop,kitchen|plastic,metal,wood|*
printer|printers|m|electronic,office|plastic|white,black,grey
remote control|remote controls|xs|hold,electronic,home,living|plastic|black,grey
book|books|xs|hold,read,openable,home,office,school,park,bedroom,living|paper|*
notebook|notebooks|xs|hold,office,school,openable|paper|*
newspaper|newspapers|xs|hold,read,home,street,park,restaurant|paper|
magazine|magazines|xs|hold,read,home,office,living|paper|
map|maps|xs|hold,read,street,wild,travel|paper|
letter|letters|xs|hold,read,office,home|paper|
pen|pens|xs|hold,office,school|plastic,metal|*
pencil|pencils|xs|hold,office,school|wood|yellow,red,blue,green
stapler|staplers|xs|hold,office|metal,plastic|*
globe|globes|s|hold,school,office||
whiteboard|whiteboards|l|office,school,fixed,washable||
filing cabinet|filing cabinets|l|furniture,surface,office,openable|metal|grey,black,beige
desk lamp|desk lamps|s|lightable,electronic,office,bedroom|metal|*
backpack|backpacks|s|hold,container,openable,school,street,park,wild,travel|leather,canvas,nylon|*
handbag|handbags|s|hold,container,street,shop,home|leather,canvas|*
purse|purses|xs|hold,container,street,shop|leather|*
suitcase|suitcases|m|hold,container,openable,street,travel|leather,plastic|*
shopping bag|shopping bags|s|hold,container,shop,street|paper,plastic,canvas|*
umbrella|umbrellas|s|hold,shelter,lean,openable,street,beach,park|nylon,fabric|*
box|boxes|s|hold,container,openable,small_surface,home,office,shop,workshop|cardboard,wood,metal|*
trash can|trash cans|m|container,street,kitchen,office,park|metal,plastic|*
watering can|watering cans|s|hold,garden|metal,plastic|*
bucket|buckets|s|hold,container,farm,garden,beach|metal,plastic|*
toolbox|toolboxes|s|hold,container,openable,workshop|metal,plastic|red,grey,blue
hammer|hammers|xs|hold,tool,workshop|wood,metal|
wrench|wrenches|xs|hold,tool,workshop|steel,metal|
screwdriver|screwdrivers|xs|hold,tool,workshop|metal,plastic|
saw|saws|s|hold,tool,workshop|steel,metal|
shovel|shovels|s|hold,tool,lean,garden,farm,snow,beach|metal,wood,plastic|
rake|rakes|m|hold,tool,lean,garden,farm|metal,wood,plastic|
broom|brooms|m|hold,tool,lean,home,street,kitchen|wood,straw|
ladder|ladders|l|tool,lean,climbable,workshop,garden,street|wood,metal,aluminum|
wheelbarrow|wheelbarrows|m|push,garden,farm|metal,wood|*
lawn mower|lawn mowers|m|push,garden|metal,plastic|red,green
garden hose|garden hoses|s|hold,garden|rubber|green,yellow
flashlight|flashlights|xs|hold,lightable,electronic,wild,home,workshop|metal,plastic|*
lantern|lanterns|s|hold,lightable,home,wild,garden|metal,glass,paper|*
tent|tents|l|shelter,wild,park,beach|canvas,nylon|*
campfire|campfires|m|burn,wild,beach,park||
bonfire|bonfires|l|burn,beach,wild||
oil lamp|oil lamps|s|hold,burn,lightable,home|glass,brass|
teddy bear|teddy bears|s|hold,toy,fluffy,home,bedroom,shop|plush|brown,white,pink
doll|dolls|s|hold,toy,home,bedroom|porcelain,wood,plastic|
toy car|toy cars|xs|hold,toy,home|plastic,metal,wood|*
toy train|toy trains|s|toy,home,living|wood,plastic,metal|*
kite|kites|s|hold,toy,flyer,beach,park|paper,nylon|*
balloon|balloons|xs|hold,toy,flyer,park,street|rubber|*
ball|balls|xs|hold,ball,toy,park,sport,beach,garden,home|rubber,leather,plastic|*
soccer ball|soccer balls|xs|hold,ball,sport,park,beach|leather|
basketball|basketballs|xs|hold,ball,sport,park|rubber,leather|orange
tennis ball|tennis balls|xs|hold,ball,sport,park|rubber|yellow,green
beach ball|beach balls|xs|hold,ball,beach,toy|plastic|*
frisbee|frisbees|xs|hold,ball,park,beach,sport|plastic|*
skateboard|skateboards|s|hold,ride,sport,street,park|wood|*
surfboard|surfboards|m|hold,ride,lean,sport,beach,water|wood,foam|*
snowboard|snowboards|m|hold,ride,sport,snow|wood|*
sled|sleds|m|hold,ride,snow|wood,plastic|*
tennis racket|tennis rackets|s|hold,sport|metal,aluminum|*
baseball bat|baseball bats|s|hold,sport,park|wood,metal,aluminum|
helmet|helmets|s|hold,wear,sport,street|plastic,metal|*
dumbbell|dumbbells|xs|hold,sport|metal,iron|
yoga mat|yoga mats|m|soft,sport,home|rubber,foam|*
rubber duck|rubber ducks|xs|hold,toy,bath|rubber|yellow
chess board|chess boards|s|small_surface,toy,home,park|wood,marble|
guitar|guitars|m|hold,instrument,lean,home,park,street,beach|wood|*
violin|violins|s|hold,instrument,home,street|wood|
piano|pianos|l|instrument,surface,home,school,heavy|wood|black,white
drum|drums|m|instrument,street,home|wood,metal|*
trumpet|trumpets|s|hold,instrument,street|brass|
flute|flutes|s|hold,instrument|silver,wood|
ukulele|ukuleles|s|hold,instrument,beach|wood|*
accordion|accordions|m|hold,instrument,street|wood|*
hat|hats|s|hold,wear|straw,wool,felt,cotton|*
cap|caps|s|hold,wear|cotton,wool|*
scarf|scarves|s|hold,wear,fluffy|wool,silk,cotton,cashmere|*
jacket|jackets|m|wear|leather,denim,wool,cotton|*
raincoat|raincoats|m|wear|rubber,plastic|yellow,red,blue,green
sweater|sweaters|m|wear,fluffy|wool,cotton,cashmere|*
dress|dresses|m|wear|silk,cotton,linen,velvet|*
coat|coats|m|wear|wool,leather|*
t-shirt|t-shirts|m|wear|cotton|*
hoodie|hoodies|m|wear|cotton|*
tie|ties|s|wear|silk|*
shoe|shoes|xs|hold,tiny_container|leather,canvas|*
boot|boots|s|hold,tiny_container|leather,rubber|*
sneaker|sneakers|xs|hold,tiny_container|canvas,leather|*
car|cars|l|vehicle,drive,land_vehicle,heavy,washable,street|metal|*
bus|buses|xl|vehicle,drive,land_vehicle,heavy,street|metal|red,yellow,blue,white,green
truck|trucks|xl|vehicle,drive,land_vehicle,heavy,street,farm|metal|*
taxi|taxis|l|vehicle,drive,land_vehicle,heavy,street|metal|yellow
van|vans|l|vehicle,drive,land_vehicle,heavy,street|metal|*
motorcycle|motorcycles|m|vehicle,ride,land_vehicle,lean,street|metal|*
scooter|scooters|m|vehicle,ride,land_vehicle,street|metal,plastic|*
bicycle|bicycles|m|vehicle,ride,land_vehicle,lean,street,park|metal,aluminum|*
tractor|tractors|l|vehicle,drive,land_vehicle,heavy,farm|metal|red,green,yellow,blue
train|trains|xl|vehicle,land_vehicle,heavy,travel|metal|*
tram|trams|xl|vehicle,land_vehicle,heavy,street|metal|*
fire truck|fire trucks|xl|vehicle,drive,land_vehicle,heavy,street|metal|red
ambulance|ambulances|l|vehicle,drive,land_vehicle,heavy,street|metal|white
boat|boats|l|vehicle,boat,water,beach|wood,metal|*
sailboat|sailboats|l|vehicle,boat,water|wood|*
canoe|canoes|m|vehicle,boat,water|wood|*
kayak|kayaks|m|vehicle,boat,water|plastic|*
rowboat|rowboats|m|vehicle,boat,water|wood|*
ferry|ferries|xl|vehicle,boat,water|metal|white
airplane|airplanes|xl|vehicle,aircraft,heavy,travel|metal|white,silver
helicopter|helicopters|xl|vehicle,aircraft,heavy|metal|*
hot air balloon|hot air balloons|xl|aircraft,flyer|nylon|*
shopping cart|shopping carts|m|push,container,shop|metal,plastic|
stroller|strollers|m|push,street,park|fabric|*
traffic light|traffic lights|m|street,fixed|metal|
fire hydrant|fire hydrants|s|street,fixed|metal|red,yellow
street lamp|street lamps|l|street,park,fixed,lightable|metal|black,green
stop sign|stop signs|m|street,fixed|metal|
mailbox|mailboxes|m|street,fixed,container,tiny_container|metal|red,blue,black
parking meter|parking meters|m|street,fixed|metal|
fence|fences|l|street,garden,farm,park,fixed,paintable,climbable|wood,metal|*
gate|gates|l|garden,farm,fixed,openable,paintable|wood,metal|*
statue|statues|l|park,street,fixed|stone,bronze,marble|
fountain|fountains|l|park,street,fixed|stone,marble|
flag|flags|m|street,sport|cotton,nylon|*
house|houses|xl|building,street,paintable|wood,brick,stone|*
cabin|cabins|xl|building,wild,snow|wood|
lighthouse|lighthouses|xl|building,beach,water|stone,brick|red,white
windmill|windmills|xl|building,farm|wood,stone|
tree|trees|xl|plant,shelter,climbable,park,garden,wild,street,farm||
palm tree|palm trees|xl|plant,warm_plant,shelter,beach||
pine tree|pine trees|xl|plant,shelter,wild,snow||
bush|bushes|m|plant,garden,park||
flower|flowers|xs|plant,hold,garden,park||*
sunflower|sunflowers|m|plant,warm_plant,garden,farm||
rose|roses|xs|plant,hold,garden||red,white,pink,yellow
tulip|tulips|xs|plant,garden||red,yellow,pink,purple
bouquet of flowers|bouquets of flowers|s|hold,plant,home,shop||
hay bale|hay bales|l|surface,farm||
rock|rocks|m|surface,climbable,wild,beach,garden,park|stone|grey
log|logs|m|surface,seat,wild|wood|
sandcastle|sandcastles|m|beach|sand|
seashell|seashells|xs|hold,beach||white,pink
towel|towels|s|hold,soft,fluffy,beach,bath|cotton|*
deck chair|deck chairs|m|seat,beach,garden|wood,plastic|*
fishing rod|fishing rods|s|hold,lean,water,wild||
snowman|snowmen|m|ice,snow||
ice sculpture|ice sculptures|l|ice||
igloo|igloos|l|ice,snow,building||
bathtub|bathtubs|l|container,bath,heavy|ceramic,porcelain,metal|white
toothbrush|toothbrushes|xs|hold,bath|plastic,bamboo|*
hair dryer|hair dryers|s|hold,bath,electronic|plastic|*
comb|combs|xs|hold,bath|plastic,wood|*
crate|crates|m|container,surface,shop,farm,workshop|wood,plastic|
scarecrow|scarecrows|m|farm,garden||
birdcage|birdcages|m|container,home,tiny_container|metal,bamboo|*
fish bowl|fish bowls|s|container,home,tiny_container|glass|
fish tank|fish tanks|m|container,home,living|glass|
matchbox|matchboxes|xs|hold,tiny_container|cardboard|
"""
)

# --- animals ----------------------------------------------------------------------------------
# polar / aquatic / desert_animal mark habitats used by the whoops rules; big_animal and
# small_animal mark the size jokes; pet, farm_animal, wild, bird, flyer, swimmer, grazer, legs
# select activities.
ANIMALS = _animals(
    """
dog|dogs|m|pet,legs,fluffy,home,park,street,garden,beach,dog|brown,black,white,golden,grey
puppy|puppies|s|pet,legs,fluffy,home,park,garden,dog|brown,black,white,golden
cat|cats|s|pet,legs,fluffy,home,living,garden,street|black,white,grey,orange,brown
kitten|kittens|xs|pet,legs,fluffy,home,living,garden|black,white,grey,orange
horse|horses|l|farm_animal,legs,rideable,grazer,farm,heavy,big_animal|brown,black,white,grey
pony|ponies|m|farm_animal,legs,rideable,grazer,farm|brown,white,grey
donkey|donkeys|m|farm_animal,legs,rideable,grazer,farm|grey,brown
cow|cows|l|farm_animal,legs,grazer,farm,heavy,big_animal|brown,black,white
sheep|sheep|m|farm_animal,legs,grazer,fluffy,farm|white,black
goat|goats|m|farm_animal,legs,grazer,farm|white,brown,black
pig|pigs|m|farm_animal,legs,farm|pink
chicken|chickens|s|farm_animal,bird,legs,farm|white,brown
rooster|roosters|s|farm_animal,bird,legs,farm|
duck|ducks|s|farm_animal,bird,flyer,swimmer,legs,farm,park,water|white,brown
goose|geese|m|farm_animal,bird,swimmer,legs,farm,park,water|white,grey
rabbit|rabbits|s|pet,legs,fluffy,garden,farm|white,brown,grey
hamster|hamsters|xs|pet,legs,fluffy,small_animal,home|brown,white,golden
mouse|mice|xs|legs,small_animal,home,farm|grey,white,brown
squirrel|squirrels|s|wild,legs,climber,park,garden|grey,brown,red
bird|birds|xs|bird,flyer,park,garden,street,wild|blue,red,yellow,brown,black
pigeon|pigeons|s|bird,flyer,street,park|grey
seagull|seagulls|s|bird,flyer,beach,water|white,grey
parrot|parrots|s|bird,flyer,pet,wild,home|green,red,blue,yellow
owl|owls|s|bird,flyer,wild|brown,white,grey
crow|crows|s|bird,flyer,street,farm|black
swan|swans|m|bird,swimmer,water,park|white,black
penguin|penguins|m|bird,polar,swimmer,legs,snow,water|
polar bear|polar bears|l|polar,wild,legs,swimmer,snow,heavy,big_animal|white
seal|seals|m|polar,swimmer,water,snow|grey
walrus|walruses|l|polar,swimmer,water,snow,heavy,big_animal|brown
bear|bears|l|wild,legs,climber,heavy,big_animal|brown,black
deer|deer|l|wild,legs,grazer,park|brown
fox|foxes|m|wild,legs,fluffy|red,orange,grey
wolf|wolves|m|wild,legs,snow|grey,white
elephant|elephants|xl|wild,legs,heavy,big_animal|grey
giraffe|giraffes|xl|wild,legs,grazer,heavy,big_animal|
zebra|zebras|l|wild,legs,grazer,big_animal|
lion|lions|l|wild,legs,big_animal|golden
tiger|tigers|l|wild,legs,big_animal|orange,white
monkey|monkeys|m|wild,legs,climber|brown,grey
hippo|hippos|xl|wild,legs,swimmer,water,heavy,big_animal|grey
rhino|rhinos|xl|wild,legs,heavy,big_animal|grey
camel|camels|l|desert_animal,legs,desert,heavy,big_animal|brown,beige
kangaroo|kangaroos|l|wild,legs,jumper|brown
panda|pandas|l|wild,legs,climber,big_animal|
turtle|turtles|s|swimmer,slow,water,beach,pet|green
frog|frogs|xs|swimmer,jumper,small_animal,water,garden|green
snail|snails|xs|slow,small_animal,garden|
butterfly|butterflies|xs|flyer,insect,small_animal,garden,park|orange,blue,yellow,white
bee|bees|xs|flyer,insect,small_animal,garden|
ladybug|ladybugs|xs|insect,small_animal,garden|red
ant|ants|xs|insect,small_animal,garden|black,red
fish|fish|s|aquatic,swimmer,water|orange,silver
goldfish|goldfish|xs|aquatic,swimmer,pet,small_animal,home|orange
shark|sharks|l|aquatic,swimmer,water,big_animal|grey
dolphin|dolphins|l|aquatic,swimmer,water|grey
whale|whales|xl|aquatic,swimmer,water,heavy,big_animal|grey,blue
octopus|octopuses|m|aquatic,swimmer,water|red,orange,purple
jellyfish|jellyfish|s|aquatic,swimmer,water|pink,blue,purple
crab|crabs|xs|swimmer,small_animal,beach,water|red,orange
"""
)

# --- people -----------------------------------------------------------------------------------
# "general" people fit anywhere; the others only where their domain tags say.
PEOPLE = _people(
    """
man|men|general,adult|him
woman|women|general,adult|her
boy|boys|general,child|him
girl|girls|general,child|her
little boy|little boys|general,child|him
little girl|little girls|general,child|her
child|children|general,child|them
baby|babies|baby,home,living,bedroom,park|them
teenager|teenagers|general,teen|them
old man|old men|general,adult|him
old woman|old women|general,adult|her
young man|young men|general,adult|him
young woman|young women|general,adult|her
chef|chefs|adult,kitchen,restaurant|them
waiter|waiters|adult,restaurant|him
waitress|waitresses|adult,restaurant|her
police officer|police officers|adult,street,travel|them
firefighter|firefighters|adult,street|them
doctor|doctors|adult,office|them
farmer|farmers|adult,farm,garden|them
fisherman|fishermen|adult,water,beach|him
student|students|school,office,park,street|them
teacher|teachers|adult,school|them
tourist|tourists|adult,street,beach,park,travel|them
skateboarder|skateboarders|street,park,sport|them
surfer|surfers|beach,water,sport|them
skier|skiers|snow,sport|them
cyclist|cyclists|street,park|them
jogger|joggers|park,street,beach|them
musician|musicians|adult,street,home,park|them
artist|artists|adult,home,park,street|them
gardener|gardeners|adult,garden,park|them
businessman|businessmen|adult,office,street,travel|him
businesswoman|businesswomen|adult,office,street,travel|her
mechanic|mechanics|adult,workshop,street|them
baker|bakers|adult,kitchen,shop|them
construction worker|construction workers|adult,street|them
"""
)

# --- places -----------------------------------------------------------------------------------
# indoor / outdoor, plus climate tags (hot, cold, dry, wet) used by the whoops rules.
PLACES = _places(
    """
kitchen|in|a|indoor,home,kitchen
living room|in|a|indoor,home,living
bedroom|in|a|indoor,home,bedroom
bathroom|in|a|indoor,home,bath
dining room|in|a|indoor,home,kitchen,restaurant
office|in|an|indoor,office,dry
classroom|in|a|indoor,school,dry
library|in|a|indoor,school,office,dry
cafe|in|a|indoor,restaurant,kitchen
restaurant|in|a|indoor,restaurant,kitchen
bakery|in|a|indoor,shop,kitchen
supermarket|in|a|indoor,shop,kitchen
flower shop|in|a|indoor,shop,garden
workshop|in|a|indoor,workshop
garage|in|a|indoor,workshop,street
attic|in|an|indoor,home,dry
gym|in|a|indoor,sport
airport terminal|in|an|indoor,travel,dry
train station|at|a|outdoor,travel,street
bus stop|at|a|outdoor,street
street|on|a|outdoor,street
city square|in|a|outdoor,street
sidewalk|on|a|outdoor,street
parking lot|in|a|outdoor,street,dry
market|at|a|outdoor,shop,street
harbor|at|a|outdoor,water,street
bridge|on|a|outdoor,street,water
park|in|a|outdoor,park
garden|in|a|outdoor,garden
backyard|in|a|outdoor,garden,park
playground|at|a|outdoor,park,sport
porch|on|a|outdoor,home,garden
balcony|on|a|outdoor,home,garden
rooftop|on|a|outdoor,street
beach|on|a|outdoor,beach,water
lake shore|on|a|outdoor,water,park
river bank|on|a|outdoor,water,wild
forest|in|a|outdoor,wild,park
meadow|in|a|outdoor,farm,wild,park
farm|on|a|outdoor,farm
barn|in|a|indoor,farm
field|in|a|outdoor,farm
orchard|in|an|outdoor,farm,garden
zoo|at|a|outdoor,wild
savanna|in|a|outdoor,wild,hot,dry
jungle|in|a|outdoor,wild,hot,wet
mountain trail|on|a|outdoor,wild
snowy field|in|a|outdoor,snow,cold
ski slope|on|a|outdoor,snow,sport,cold
campsite|at|a|outdoor,wild,park
tennis court|on|a|outdoor,sport
soccer field|on|a|outdoor,sport,park
desert|in|a|outdoor,desert,hot,dry
"""
)

PLACE_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "indoor": ("cozy", "bright", "messy", "tidy", "dimly lit", "spacious", "small", "modern",
               "cluttered", "quiet", "sunlit", "crowded"),
    "outdoor": ("sunny", "quiet", "foggy", "rainy", "windy", "peaceful", "shady", "empty",
                "misty", "wet"),
    "busy": ("busy", "crowded", "noisy", "bustling"),
    "snow": ("snowy", "frozen", "icy"),
    "desert": ("sandy", "hot", "dusty"),
}  # fmt: skip

# --- verbs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verb:
    """An activity. ``objects`` empty: intransitive (an entity state); else the object's tags."""

    lemma: str
    gerund: str
    third: str  # third person singular present
    agents: frozenset[str]  # the agent needs one of these tags
    objects: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()  # where it happens (empty: anywhere)

    @property
    def base(self) -> str:
        return self.lemma


def _verbs(block: str) -> tuple[Verb, ...]:
    out = []
    for lemma, gerund, third, agents, objects, domains in _lines(block):
        out.append(
            Verb(lemma, gerund, third, frozenset(_split(agents)), frozenset(_split(objects)),
                 frozenset(_split(domains)))
        )  # fmt: skip
    return tuple(out)


_OUT = "park,street,garden,beach,farm,wild,sport,snow,water"
STATES = _verbs(
    f"""
run|running|runs|general,pet,dog,legs,jogger,tourist,student||{_OUT}
walk|walking|walks|person,legs||
sleep|sleeping|sleeps|person,animal||
sit|sitting|sits|person,legs,bird||
stand|standing|stands|person,legs,bird||
jump|jumping|jumps|child,teen,pet,jumper||park,garden,beach,sport,home,living
smile|smiling|smiles|person||
laugh|laughing|laughs|person||
dance|dancing|dances|general,musician||home,living,street,beach,park,restaurant
swim|swimming|swims|swimmer||water,beach
fly|flying|flies|flyer||{_OUT}
graze|grazing|grazes|grazer||farm,wild,park
rest|resting|rests|person,animal||
wait|waiting|waits|adult,teen,student,tourist,businessman,businesswoman|\
|street,travel,office,restaurant
bark|barking|barks|dog||
play|playing|plays|child,pet,dog||
eat|eating|eats|person,animal||
sing|singing|sings|general,musician,bird||
crawl|crawling|crawls|baby,insect,crab||
yawn|yawning|yawns|person,dog,cat,kitten,puppy||
stretch|stretching|stretches|person,dog,cat,kitten,puppy||
wave|waving|waves|general,tourist,police officer||
cook|cooking|cooks|chef,adult,baker||kitchen,restaurant
climb|climbing|climbs|climber,child||wild,park,garden
drink|drinking|drinks|legs,person||
"""
)

ACTIONS = _verbs(
    """
hold|holding|holds|person|hold|
carry|carrying|carries|adult,teen,child,general,tourist,student|hold|
eat|eating|eats|general,adult,child,teen,student,tourist|food|
look at|looking at|looks at|person,animal|thing|
read|reading|reads|adult,teen,child,student,tourist,businessman,businesswoman|read|
ride|riding|rides|general,adult,teen,child,tourist,skateboarder,cyclist,surfer,skier|ride,rideable|
drive|driving|drives|adult,firefighter,farmer,police officer|drive|
push|pushing|pushes|adult,general,gardener,farmer|push|
play|playing|plays|general,musician,adult,teen,child,student|instrument|
chase|chasing|chases|dog,cat|ball|
throw|throwing|throws|general,child,teen,adult|ball|
kick|kicking|kicks|general,child,teen|ball|
catch|catching|catches|general,child,teen,dog|ball|
feed|feeding|feeds|general,adult,child,farmer|farm_animal,pet,bird|
pet|petting|pets|general,child,adult|pet,farm_animal|
walk|walking|walks|general,adult,teen|dog|
hug|hugging|hugs|general,child|pet,teddy bear,doll|
wash|washing|washes|adult,general,teen|washable,dog|
paint|painting|paints|adult,artist|paintable|
fix|fixing|fixes|adult,mechanic|vehicle,electronic|
open|opening|opens|person|openable|
sniff|sniffing|sniffs|dog,cat|thing|
sit on|sitting on|sits on|person,pet|seat|
lie on|lying on|lies on|person,dog,cat,kitten,puppy|soft|
drink from|drinking from|drinks from|general,adult,teen,student,tourist|drink_vessel|
type on|typing on|types on|adult,teen,student,businessman,businesswoman|typeable|
talk on|talking on|talks on|adult,teen,student,tourist,businessman,businesswoman|phone|
photograph|photographing|photographs|tourist,adult,teen,artist|animal,building,thing|
cut|cutting|cuts|adult,chef,baker|fruit,veg,bread,meal,dessert|
water|watering|waters|gardener,adult,child,farmer|plant|
climb|climbing|climbs|child,teen,climber,adult|climbable|
"""
)

WEAR = "wear"

# --- spatial relations ------------------------------------------------------------------------
# (phrase in the prompt, tuple predicate). "on" needs a surface, "in" a container ...
SPATIAL = {
    "on": ("on", "on top of", "resting on", "sitting on", "lying on", "placed on", "standing on"),
    "in": ("in", "inside"),
    "under": ("under", "beneath", "underneath"),
    "next to": ("next to", "beside", "near", "by"),
    "behind": ("behind",),
    "in front of": ("in front of",),
    "above": ("above", "hanging above", "flying above"),
    "against": ("leaning against", "propped against"),
}

# --- whoops: commonsense-defying pairings -----------------------------------------------------
# Places that exist only for the whoops generator, with climate tags.
WHOOPS_PLACES = _places(
    """
desert|in the middle of|a|hot,dry,outdoor
sand dune|on|a|hot,dry,outdoor
sauna|in|a|hot,indoor,dry
volcano|at the edge of|an|hot,dry,outdoor
tropical jungle|in|a|hot,wet,outdoor
savanna|in|a|hot,dry,outdoor
office|in|an|dry,indoor
library|in|a|dry,indoor
parking lot|in|a|dry,outdoor
wheat field|in|a|dry,outdoor
highway|in the middle of|a|dry,outdoor,traffic
classroom|in|a|dry,indoor
living room|in|a|dry,indoor
supermarket|in|a|dry,indoor
kitchen|in|a|dry,indoor
bakery|in|a|dry,indoor
busy intersection|in the middle of|a|dry,outdoor,traffic
airport runway|on|an|dry,outdoor,traffic
train track|on|a|dry,outdoor,traffic
glacier|on top of|a|cold,outdoor
iceberg|on|an|cold,wet,outdoor
snowy mountain|on|a|cold,outdoor
frozen lake|on|a|cold,outdoor
ski slope|on|a|cold,outdoor
swimming pool|at the bottom of|a|wet,outdoor,underwater
sea|under|the|wet,outdoor,underwater
fish tank|inside|a|wet,indoor,underwater
lake|at the bottom of|a|wet,outdoor,underwater
coral reef|on|a|wet,outdoor,underwater
ocean|in the middle of|the|wet,outdoor,open_water
river|down|a|wet,outdoor,open_water
pond|at the bottom of|a|wet,outdoor,underwater
aquarium|inside|an|wet,indoor,underwater
ocean floor|on|the|wet,outdoor,underwater
sunken ship|inside|a|wet,outdoor,underwater
boiler room|in|a|hot,indoor,dry
salt flat|on|a|hot,dry,outdoor
cactus field|in|a|hot,dry,outdoor
arctic tundra|in|the|cold,outdoor
walk-in freezer|inside|a|cold,indoor
bookstore|in|a|dry,indoor
hotel lobby|in|a|dry,indoor
gas station|at|a|dry,outdoor
tennis court|on|a|dry,outdoor
rooftop|on|a|dry,outdoor
railway crossing|at|a|dry,outdoor,traffic
busy road|in the middle of|a|dry,outdoor,traffic
roundabout|in the middle of|a|dry,outdoor,traffic
"""
)


def whoops_place(name: str) -> Noun:
    for p in WHOOPS_PLACES:
        if p.name == name:
            return p
    raise KeyError(name)


# Hot spots for the ice jokes: (name, preposition, size it can hold).
HOT_SPOTS = (
    ("frying pan", "in", "s"), ("oven", "inside", "s"), ("toaster", "in", "xs"),
    ("barbecue grill", "on", "s"), ("campfire", "on top of", "m"), ("fireplace", "in", "m"),
    ("desert", "in the middle of", "xl"), ("sauna", "in", "l"),
    ("pool of lava", "on", "xl"), ("stove", "on", "s"),
)  # fmt: skip
HOT_ADJ = {"frying pan": "sizzling hot", "oven": "hot", "toaster": "glowing",
           "barbecue grill": "hot", "campfire": "roaring", "fireplace": "roaring",
           "desert": "scorching", "sauna": "steaming", "pool of lava": "bubbling",
           "stove": "hot"}  # fmt: skip

# Things that should never be made of these (functional objects).
WEIRD_MATERIALS = (
    "ice", "butter", "jelly", "chocolate", "cheese", "bread", "soap", "spaghetti",
    "cotton candy", "feathers", "sand", "marshmallows", "lettuce leaves", "whipped cream",
    "bubble gum", "jelly beans", "toast", "soft clay", "pudding",
)  # fmt: skip
MATERIAL_JOKE_TAGS = ("tool", "furniture", "vehicle", "utensil", "instrument", "electronic",
                      "ride", "ladder")  # fmt: skip

# Animals doing what only people do: (lemma, gerund, third, object name or "").
HUMAN_ACTIVITIES = (
    ("drive", "driving", "drives", "car"), ("drive", "driving", "drives", "bus"),
    ("drive", "driving", "drives", "taxi"), ("drive", "driving", "drives", "tractor"),
    ("drive", "driving", "drives", "truck"),
    ("type on", "typing on", "types on", "laptop"), ("type on", "typing on", "types on",
                                                     "keyboard"),
    ("read", "reading", "reads", "newspaper"), ("read", "reading", "reads", "book"),
    ("read", "reading", "reads", "magazine"), ("read", "reading", "reads", "map"),
    ("play", "playing", "plays", "piano"), ("play", "playing", "plays", "guitar"),
    ("play", "playing", "plays", "violin"), ("play", "playing", "plays", "trumpet"),
    ("play", "playing", "plays", "accordion"), ("play", "playing", "plays", "drum"),
    ("talk on", "talking on", "talks on", "cell phone"),
    ("talk on", "talking on", "talks on", "smartphone"),
    ("ride", "riding", "rides", "bicycle"), ("ride", "riding", "rides", "skateboard"),
    ("ride", "riding", "rides", "scooter"), ("ride", "riding", "rides", "motorcycle"),
    ("push", "pushing", "pushes", "shopping cart"), ("push", "pushing", "pushes", "stroller"),
    ("push", "pushing", "pushes", "lawn mower"),
    ("use", "using", "uses", "laptop"), ("use", "using", "uses", "camera"),
    ("paint", "painting", "paints", "fence"),
    ("wash", "washing", "washes", "car"), ("fix", "fixing", "fixes", "bicycle"),
    ("stir", "stirring", "stirs", "cooking pot"),
    ("brush its teeth", "brushing its teeth", "brushes its teeth", ""),
    ("take a selfie", "taking a selfie", "takes a selfie", ""),
    ("lift weights", "lifting weights", "lifts weights", ""),
    ("knit a scarf", "knitting a scarf", "knits a scarf", ""),
    ("iron a shirt", "ironing a shirt", "irons a shirt", ""),
    ("do homework", "doing homework", "does homework", ""),
    ("play chess", "playing chess", "plays chess", ""),
    ("give a speech", "giving a speech", "gives a speech", ""),
)  # fmt: skip

# Tasks and the tool they need; ABSURD_TOOLS are used in their place.
TASKS = (
    ("hammer a nail", "hammering a nail", "hammers a nail", "hammer"),
    ("eat soup", "eating soup", "eats soup", "spoon"),
    ("cut bread", "cutting bread", "cuts bread", "knife"),
    ("comb", "combing", "combs", "comb"),
    ("stir coffee", "stirring coffee", "stirs coffee", "spoon"),
    ("sweep the floor", "sweeping the floor", "sweeps the floor", "broom"),
    ("write a letter", "writing a letter", "writes a letter", "pen"),
    ("dig a hole", "digging a hole", "digs a hole", "shovel"),
    ("water the flowers", "watering the flowers", "waters the flowers", "watering can"),
    ("play tennis", "playing tennis", "plays tennis", "tennis racket"),
    ("play baseball", "playing baseball", "plays baseball", "baseball bat"),
    ("paint a wall", "painting a wall", "paints a wall", "paintbrush"),
)  # fmt: skip
ABSURD_TOOLS = (
    "banana", "carrot", "baguette", "cucumber", "teddy bear", "rubber duck", "sneaker", "fork",
    "pineapple", "remote control", "toothbrush", "loaf of bread", "eggplant", "feather",
    "croissant", "tennis ball", "flower",
)  # fmt: skip
# (task, tool) pairs that are merely unusual, not absurd
_PLAUSIBLE_TOOL_USE = {("sweep the floor", "toothbrush"), ("eat soup", "croissant"),
                       ("eat soup", "baguette")}  # fmt: skip

DESSERTS = (
    ("slice of chocolate cake", "cake"), ("bowl of vanilla ice cream", "ice cream"),
    ("pink cupcake", "cupcake"), ("stack of pancakes", "pancakes"),
    ("glazed donut", "donut"), ("bowl of cereal", "cereal"), ("slice of cheesecake", "cheesecake"),
    ("waffle", "waffle"), ("birthday cake", "cake"), ("fruit salad", "fruit salad"),
    ("chocolate pudding", "pudding"), ("plate of cookies", "cookies"),
    ("strawberry tart", "tart"), ("cinnamon roll", "cinnamon roll"),
)  # fmt: skip
SAVOURY = (
    "ketchup", "mustard", "raw onions", "cherry tomatoes", "sardines", "pickles", "broccoli",
    "mayonnaise", "garlic cloves", "fried eggs", "anchovies", "chili peppers", "soy sauce",
    "mashed potatoes", "french fries", "olives", "raw fish", "sausages", "gravy", "onion rings",
)  # fmt: skip
DRINKS = ("coffee", "tea", "orange juice", "milk", "red wine", "lemonade", "hot chocolate",
          "soup", "apple juice", "cola", "iced tea")  # fmt: skip
ABSURD_VESSELS = ("shoe", "sneaker", "boot", "flower pot", "colander", "sieve", "paper bag",
                  "lampshade", "helmet", "light bulb", "glove", "sock")  # fmt: skip

# Unnatural colours for produce (a colour is weird when the noun's natural colours lack it).
WEIRD_COLORS = ("blue", "bright blue", "purple", "pink", "turquoise", "silver", "neon green",
                "black and white striped", "rainbow-colored", "gold")  # fmt: skip

# People doing things where they cannot be done: (activity, needs) with needs in
# {water, snow, quiet}; a place defies it when it lacks what is needed.
PLACE_ACTIVITIES = (
    ("swim", "swimming", "swims", "water"), ("surf", "surfing", "surfs", "water"),
    ("dive", "diving", "dives", "water"), ("fish", "fishing", "fishes", "water"),
    ("row a boat", "rowing a boat", "rows a boat", "water"),
    ("ski", "skiing", "skis", "snow"), ("ice skate", "ice skating", "ice skates", "snow"),
    ("build a snowman", "building a snowman", "builds a snowman", "snow"),
    ("sled", "sledding", "sleds", "snow"),
    ("sleep", "sleeping", "sleeps", "quiet"), ("have a picnic", "having a picnic",
                                               "has a picnic", "quiet"),
    ("take a bubble bath", "taking a bubble bath", "takes a bubble bath", "quiet"),
    ("read a newspaper", "reading a newspaper", "reads a newspaper", "quiet"),
    ("do yoga", "doing yoga", "does yoga", "quiet"),
    ("sunbathe", "sunbathing", "sunbathes", "quiet"),
)  # fmt: skip

WHOOPS_KINDS = (
    "habitat", "fire_water", "ice_heat", "material", "animal_human", "vehicle_terrain",
    "size", "wrong_tool", "food_pairing", "drink_vessel", "produce_color", "place_activity",
    "plant_place",
)  # fmt: skip


# --- scenery: what narrators list around the main subject (localized narratives) ------------
# name|plural|where (indoor / outdoor / a domain)|mass (1: uncountable, e.g. grass)
SCENERY = tuple(
    Noun(name, plural, "thing", "l", frozenset({*_split(where), "scenery"}))
    if mass == "0"
    else Noun(name, name, "thing", "l", frozenset({*_split(where), "scenery", "mass"}))
    for name, plural, where, mass in _lines(
        """
wall|walls|indoor|0
light|lights|indoor,outdoor|0
window|windows|indoor,street|0
poster|posters|indoor|0
photo frame|photo frames|indoor|0
door|doors|indoor,street|0
curtain|curtains|indoor|0
person|people|indoor,outdoor|0
tree|trees|outdoor|0
building|buildings|street,outdoor|0
pole|poles|street|0
wire|wires|street|0
vehicle|vehicles|street|0
signboard|signboards|street|0
mountain|mountains|wild,snow,farm|0
hill|hills|farm,wild,park|0
rock|rocks|wild,beach,water|0
plant|plants|indoor,outdoor|0
house|houses|street,farm,garden|0
railing|railings|street,water|0
stone|stones|outdoor|0
leaf|leaves|park,garden,wild|0
shed|sheds|farm,garden|0
boat|boats|water,beach|0
grass||outdoor|1
sand||beach,desert|1
snow||snow|1
water||water,beach|1
road||street|0
"""
    )
)

# --- diffusiondb: subjects, places, media and keywords the way text-to-image users write ------
DDB_PEOPLE = _people(
    """
knight|knights|adult|them
wizard|wizards|adult|him
astronaut|astronauts|adult|them
samurai|samurai|adult|him
pirate|pirates|adult|them
queen|queens|adult|her
king|kings|adult|him
witch|witches|adult|her
robot|robots|adult|it
cyborg|cyborgs|adult|them
elf|elves|adult|them
sorceress|sorceresses|adult|her
detective|detectives|adult|them
explorer|explorers|adult|them
sailor|sailors|adult|them
monk|monks|adult|him
old fisherman|old fishermen|adult|him
sea captain|sea captains|adult|them
ballerina|ballerinas|adult|her
warrior princess|warrior princesses|adult|her
scientist|scientists|adult|them
librarian|librarians|adult|them
street musician|street musicians|adult|them
blacksmith|blacksmiths|adult|them
shepherd|shepherds|adult|them
beekeeper|beekeepers|adult|them
clockmaker|clockmakers|adult|them
florist|florists|adult|them
old woman|old women|adult|her
young girl|young girls|child|her
"""
)
DDB_CREATURES = _animals(
    """
corgi puppy|corgi puppies|s|dog,legs,fluffy|golden,brown,white
shiba inu|shiba inus|s|dog,legs,fluffy|orange,golden
red panda|red pandas|s|legs,fluffy|red
fox|foxes|m|legs,fluffy|orange,red,white
owl|owls|s|bird,flyer|brown,white,grey
cat|cats|s|legs,fluffy|black,white,orange,grey
dragon|dragons|xl|flyer,legs|red,green,golden,black,blue
unicorn|unicorns|l|legs|white,pink
phoenix|phoenixes|l|bird,flyer|red,orange,golden
koala|koalas|s|legs,fluffy|grey
raccoon|raccoons|s|legs|grey
axolotl|axolotls|xs|swimmer|pink
capybara|capybaras|m|legs,swimmer|brown
hedgehog|hedgehogs|xs|legs|brown
otter|otters|s|legs,swimmer|brown
sloth|sloths|m|legs|brown
lion|lions|l|legs|golden
wolf|wolves|m|legs,fluffy|grey,white,black
tiger|tigers|l|legs|orange,white
whale|whales|xl|swimmer,flyer|blue,grey
jellyfish|jellyfish|s|swimmer,flyer|pink,blue,purple
sea turtle|sea turtles|m|swimmer|green
octopus|octopuses|m|swimmer|red,purple,orange
hummingbird|hummingbirds|xs|bird,flyer|green,blue
bunny|bunnies|xs|legs,fluffy|white,brown,grey
fennec fox|fennec foxes|s|legs,fluffy|beige
deer|deer|l|legs|brown,white
frog|frogs|xs|legs,swimmer|green,blue
goldfish|goldfish|xs|swimmer,flyer|orange
snow leopard|snow leopards|l|legs,fluffy|white,grey
polar bear|polar bears|l|legs,fluffy,swimmer|white
peacock|peacocks|m|bird|blue,green,white
hamster|hamsters|xs|legs,fluffy|golden,brown,white
elephant|elephants|xl|legs|grey,white
giraffe|giraffes|xl|legs|
penguin|penguins|m|legs,swimmer|
"""
)
DDB_PLACES = _places(
    """
outer space|in|-|fantasy
moon|on|the|fantasy
alien planet|on|an|fantasy
underwater city|in|an|fantasy
floating island|on|a|fantasy
cyberpunk city|in|a|fantasy,city
enchanted forest|in|an|fantasy,forest
misty mountain valley|in|a|fantasy
steampunk workshop|in|a|fantasy,indoor
crystal cave|in|a|fantasy
ruined temple|in|a|fantasy
wildflower meadow|in|a|fantasy
snowy village|in|a|fantasy
cozy library|in|a|fantasy,indoor
neon-lit alley|in|a|fantasy,city
seaside cliff|on|a|fantasy
bamboo forest|in|a|fantasy,forest
pirate ship|on|a|fantasy
desert oasis|in|a|fantasy
cherry blossom tree|under|a|fantasy
sunflower field|in|a|fantasy
haunted castle|in|a|fantasy,indoor
rooftop garden|on|a|fantasy
night market|in|a|fantasy,city
frozen tundra|in|a|fantasy
candlelit cathedral|in|a|fantasy,indoor
misty lake|on|a|fantasy
lavender field|in|a|fantasy
sky|in|the|fantasy
rainforest|in|a|fantasy,forest
volcanic landscape|in|a|fantasy
tea garden|in|a|fantasy
train station|at|a|fantasy,city
coral reef|on|a|fantasy
"""
)
DDB_BUILDINGS = _things(
    """
cabin|cabins|xl|building|wood,stone|
cottage|cottages|xl|building|stone,wood|
castle|castles|xl|building|stone|
lighthouse|lighthouses|xl|building|stone|red,white
treehouse|treehouses|xl|building|wood|
temple|temples|xl|building|stone,gold|
tower|towers|xl|building|stone,glass|
greenhouse|greenhouses|xl|building|glass|
windmill|windmills|xl|building|wood,stone|
library|libraries|xl|building|stone|
tea house|tea houses|xl|building|wood|
bridge|bridges|xl|building|stone,wood|
cathedral|cathedrals|xl|building|stone,glass|
observatory|observatories|xl|building|stone,metal|
bakery|bakeries|xl|building|brick,wood|
bookshop|bookshops|xl|building|wood,brick|
houseboat|houseboats|xl|building|wood|
farmhouse|farmhouses|xl|building|wood,stone|
pagoda|pagodas|xl|building|wood,stone|red,gold
monastery|monasteries|xl|building|stone|
mansion|mansions|xl|building|stone,brick|
hut|huts|xl|building|straw,wood|
skyscraper|skyscrapers|xl|building|glass,steel|
"""
)
DDB_BUILDING_ADJ = (
    "cozy", "abandoned", "ancient", "futuristic", "floating", "overgrown", "tiny", "massive",
    "gothic", "crumbling", "glowing", "victorian", "medieval", "modern", "rustic", "haunted",
    "snow-covered", "colorful",
)  # fmt: skip
DDB_CREATURE_ADJ = (
    "cute", "majestic", "adorable", "curious", "wise old", "ethereal", "tiny", "giant", "fluffy",
    "mechanical", "glowing", "sleepy", "baby",
)  # fmt: skip
DDB_LANDSCAPES = ("mountain valley", "lake", "canyon", "meadow", "coastline", "glacier",
                  "volcano", "waterfall", "desert", "forest clearing", "river delta", "fjord",
                  "tundra", "lavender field", "archipelago", "rice terrace", "salt flat",
                  "bay")  # fmt: skip
DDB_LANDSCAPE_ADJ = ("vast", "serene", "misty", "dramatic", "lush", "frozen", "sunlit",
                     "stormy", "alien", "peaceful", "endless", "quiet")  # fmt: skip
DDB_SKY = (("starry", "sky"), ("stormy", "sky"), ("cloudy", "sky"), ("full", "moon"),
           ("crescent", "moon"), ("setting", "sun"), ("glowing", "aurora"), ("pink", "sky"),
           ("orange", "sky"), ("purple", "sky"))  # fmt: skip
DDB_CLOTHES = _things(
    """
cloak|cloaks|m|wear|velvet,wool|red,black,green,blue,purple,grey
armor|armors|m|wear|gold,silver,bronze,steel|
spacesuit|spacesuits|m|wear||white,orange,silver
kimono|kimonos|m|wear|silk|red,blue,white,black,pink
jacket|jackets|m|wear|leather,denim|black,brown,red
crown|crowns|s|wear|gold,silver|
robe|robes|m|wear|silk,velvet|blue,purple,red,white,black
cape|capes|m|wear|velvet,silk|red,black,blue
hat|hats|s|wear|felt,straw|black,red,green,brown
sweater|sweaters|m|wear|wool|red,green,yellow,cream-colored
dress|dresses|m|wear|silk,velvet|red,blue,white,emerald green,golden
raincoat|raincoats|m|wear|rubber|yellow,red
scarf|scarves|s|wear|wool,silk|red,blue,green,yellow
helmet|helmets|s|wear|brass,steel,gold|
suit|suits|m|wear|wool,velvet|black,grey,navy blue,white
"""
)
# (phrase before the noun's attributes, part noun, colours it may have; "" = no colour)
DDB_PARTS = (
    ("a long {c} beard", "beard", ("white", "grey", "red", "black", "golden")),
    ("a braided {c} beard", "beard", ("white", "grey", "red", "brown")),
    ("long {c} hair", "hair", ("silver", "red", "black", "golden", "blue", "pink", "white")),
    ("curly {c} hair", "hair", ("red", "black", "brown", "golden")),
    ("{c} eyes", "eyes", ("glowing blue", "green", "golden", "violet")),
    ("freckles", "freckles", ()),
    ("a scar", "scar", ()),
    ("tattoos", "tattoos", ()),
    ("pointed ears", "ears", ()),
    ("large {c} wings", "wings", ("white", "black", "golden", "silver")),
    ("{c} horns", "horns", ("black", "white", "golden")),
)  # fmt: skip
DDB_PERSON_ADJ = ("old", "young", "elderly", "beautiful", "mysterious", "stoic", "tired",
                  "smiling", "wise")  # fmt: skip
DDB_ACTIONS = (  # lemma, gerund, object name (from THINGS)
    ("read", "reading", "book"), ("hold", "holding", "lantern"),
    ("hold", "holding", "umbrella"), ("play", "playing", "violin"),
    ("drink from", "drinking from", "teacup"), ("ride", "riding", "bicycle"),
    ("carry", "carrying", "basket"), ("hold", "holding", "balloon"),
    ("play", "playing", "guitar"), ("hold", "holding", "candle"),
    ("look at", "looking at", "globe"), ("carry", "carrying", "backpack"),
    ("hold", "holding", "bouquet of flowers"), ("play", "playing", "flute"),
    ("ride", "riding", "skateboard"), ("hold", "holding", "cup"),
)  # fmt: skip
DDB_STATES = (("float", "floating"), ("sit", "sitting"), ("sleep", "sleeping"),
              ("fly", "flying"), ("dance", "dancing"), ("stand", "standing"),
              ("run", "running"), ("meditate", "meditating"), ("rest", "resting"),
              ("smile", "smiling"), ("walk", "walking"), ("swim", "swimming"))  # fmt: skip
# prompt prefix, tuple value, question (value "" = no style question)
DDB_PREFIXES = (
    ("a beautiful painting of", "painting", "Is this a painting?"),
    ("an oil painting of", "oil painting", "Is this an oil painting?"),
    ("a watercolor painting of", "watercolor", "Is this a watercolor painting?"),
    ("a highly detailed digital illustration of", "digital illustration",
     "Is this a digital illustration?"),
    ("digital art of", "digital art", "Is this digital art?"),
    ("concept art of", "concept art", "Is this concept art?"),
    ("a photograph of", "photograph", "Is this a photograph?"),
    ("a cinematic still of", "film still", "Is this a film still?"),
    ("a 3d render of", "3d render", "Is this a 3D render?"),
    ("a pencil sketch of", "pencil sketch", "Is this a pencil sketch?"),
    ("a charcoal drawing of", "charcoal drawing", "Is this a charcoal drawing?"),
    ("a matte painting of", "matte painting", "Is this a matte painting?"),
    ("an anime illustration of", "anime", "Is this image in anime style?"),
    ("a low poly model of", "low poly", "Is this a low poly image?"),
    ("a pixel art image of", "pixel art", "Is this pixel art?"),
    ("a polaroid photo of", "polaroid photo", "Is this a polaroid photo?"),
    ("an ink drawing of", "ink drawing", "Is this an ink drawing?"),
    ("a stained glass window of", "stained glass", "Is this a stained glass window?"),
    ("a vintage poster of", "poster", "Is this a poster?"),
    ("an isometric illustration of", "isometric illustration",
     "Is this an isometric illustration?"),
    ("a storybook illustration of", "storybook illustration",
     "Is this a storybook illustration?"),
    ("a ukiyo-e woodblock print of", "ukiyo-e", "Is this a ukiyo-e woodblock print?"),
    ("a studio photo of", "studio photo", "Is this a studio photo?"),
    ("a macro photograph of", "macro photograph", "Is this a macro photograph?"),
    ("an acrylic painting of", "acrylic painting", "Is this an acrylic painting?"),
    ("a gouache painting of", "gouache painting", "Is this a gouache painting?"),
    ("a claymation still of", "claymation", "Is this image in claymation style?"),
)  # fmt: skip
DDB_STYLES = (
    "art nouveau", "cyberpunk", "steampunk", "baroque", "impressionism", "surrealism",
    "vaporwave", "synthwave", "dark fantasy", "pop art", "art deco", "gothic", "minimalism",
    "cel shading", "photorealism", "retro futurism", "solarpunk", "film noir", "fantasy art",
    "romanticism", "cubism", "expressionism", "psychedelic art", "lowbrow art",
)  # fmt: skip
# long-dead painters only (no living artists)
DDB_ARTISTS = ("van gogh", "claude monet", "rembrandt", "katsushika hokusai", "alphonse mucha",
               "caravaggio", "johannes vermeer", "gustav klimt", "william turner",
               "leonardo da vinci", "john singer sargent", "ivan aivazovsky", "gustave dore",
               "albert bierstadt", "hieronymus bosch", "edvard munch")  # fmt: skip
DDB_LIGHTING = ("volumetric lighting", "golden hour", "dramatic lighting", "soft lighting",
                "rim lighting", "cinematic lighting", "studio lighting", "god rays",
                "neon glow", "moody lighting", "backlit", "warm sunset light",
                "ambient occlusion", "global illumination", "bloom", "subsurface scattering",
                "candlelight", "blue hour", "overcast light", "hard shadows")  # fmt: skip
DDB_QUALITY = ("octane render", "unreal engine 5", "ue 5", "ray tracing", "8 k", "4k", "hdr",
               "highly detailed", "hyper detailed", "intricate details", "sharp focus",
               "trending on artstation", "artstation hq", "award winning", "masterpiece",
               "cgsociety", "behance hd", "depth of field", "bokeh", "wide angle lens",
               "35mm", "85mm lens", "smooth", "elegant", "stunning", "epic composition",
               "matte finish", "vivid colors", "pastel colors", "muted colors",
               "high contrast", "symmetrical", "centered", "film grain", "kodak portra 400",
               "ultra realistic", "4 k resolution", "cinematic", "beautiful", "dreamy",
               "whimsical", "realistic", "maya", "blender", "redshift", "zbrush",
               "physically based rendering", "tilt shift", "long exposure",
               "highly detailed textures", "crisp", "fine details", "atmospheric")  # fmt: skip


def thing(name: str) -> Noun:
    """The thing or animal called ``name``."""
    n = _BY_NAME.get(name)
    if n is None:
        raise KeyError(name)
    return n


_BY_NAME: dict[str, Noun] = {n.name: n for n in (*THINGS, *ANIMALS, *PEOPLE)}


def defies(kind: str, a: str, b: str) -> bool:
    """Whether pairing ``a`` with ``b`` under rule ``kind`` defies common sense.

    ``a`` is the subject (animal, thing, person activity ...), ``b`` the place, material,
    colour, tool or companion it is paired with.
    """
    if kind == "habitat":
        animal, place = thing(a), whoops_place(b)
        return (
            (animal.has("polar") and place.has("hot"))
            or (animal.has("aquatic") and place.has("dry"))
            or (animal.has("desert_animal") and place.has("cold", "underwater"))
        )
    if kind == "fire_water":
        return thing(a).has("burn") and whoops_place(b).has("underwater")
    if kind == "ice_heat":
        return thing(a).has("ice") and b in {h[0] for h in HOT_SPOTS}
    if kind == "material":
        t = thing(a)
        return b in WEIRD_MATERIALS and b not in t.materials and t.has(*MATERIAL_JOKE_TAGS)
    if kind == "animal_human":
        return thing(a).kind == "animal" and b in {h[0] for h in HUMAN_ACTIVITIES}
    if kind == "vehicle_terrain":
        v, place = thing(a), whoops_place(b)
        return (
            (v.has("land_vehicle") and place.has("open_water", "underwater"))
            or (v.has("boat") and place.has("dry") and place.has("outdoor"))
            or (v.has("aircraft") and place.has("indoor"))
        )
    if kind == "size":
        animal, other = thing(a), thing(b)
        return (animal.has("big_animal") and other.has("tiny_container")) or (
            animal.has("small_animal") and other.has("heavy")
        )
    if kind == "wrong_tool":
        tools = {t[0]: t[3] for t in TASKS}
        return (
            a in tools
            and b in ABSURD_TOOLS
            and b != tools[a]
            and ((a, b) not in _PLAUSIBLE_TOOL_USE)
        )
    if kind == "food_pairing":
        return a in {d[1] for d in DESSERTS} and b in SAVOURY
    if kind == "drink_vessel":
        return a in DRINKS and b in ABSURD_VESSELS
    if kind == "produce_color":
        t = thing(a)
        return t.has("fruit", "veg") and b in WEIRD_COLORS and b not in t.colors
    if kind == "place_activity":
        needs = {p[0]: p[3] for p in PLACE_ACTIVITIES}
        place = whoops_place(b)
        need = needs.get(a)
        if need == "water":
            return place.has("dry") and not place.has("wet")
        if need == "snow":
            return place.has("hot") or (place.has("indoor") and not place.has("cold"))
        if need == "quiet":
            return place.has("traffic")
        return False
    if kind == "plant_place":
        plant, place = thing(a), whoops_place(b)
        return plant.has("plant") and (
            place.has("underwater") or (plant.has("warm_plant") and place.has("cold"))
        )
    return False


def vocabulary_sizes() -> dict[str, int]:
    """How many entries each part of the vocabulary has (for reports and tests)."""
    return {
        "things": len(THINGS),
        "animals": len(ANIMALS),
        "people": len(PEOPLE),
        "places": len(PLACES),
        "whoops_places": len(WHOOPS_PLACES),
        "colors": len(PALETTE),
        "materials": len(MATERIALS),
        "states": len(STATES),
        "actions": len(ACTIONS),
        "spatial_phrases": sum(len(v) for v in SPATIAL.values()),
        "weird_materials": len(WEIRD_MATERIALS),
        "human_activities": len(HUMAN_ACTIVITIES),
    }
